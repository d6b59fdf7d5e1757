"""The post-processing flags ``segment`` and ``client`` share; unset flags take MedSAM2's default for the study."""

from __future__ import annotations

import argparse

from medsam2.engine.postprocessing import PostProcessingOptions, StudyKind, resolve


def add_postprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --[no-]largest-component, --fill-hole-area, --[no-]non-overlapping and --[no-]binarize-memory."""
    group = parser.add_argument_group(
        "post-processing (defaults: MedSAM2's 3D script for volumes, its video script for videos)"
    )
    group.add_argument(
        "--largest-component",
        dest="largest_component",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep only each object's largest 3D component, 26-connected [volumes: on, as MedSAM2's 3D script; "
        "videos: off]",
    )
    group.add_argument(
        "--fill-hole-area",
        type=int,
        default=None,
        metavar="N",
        help="fill background holes of up to N low-resolution pixels, 0 for none [volumes: 8 (sam2's "
        "apply_postprocessing); videos: 0, as MedSAM2's video script]",
    )
    group.add_argument(
        "--non-overlapping",
        dest="non_overlapping_objects",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give each pixel to the object with the largest logit (sam2's non_overlap_masks) [videos: on, as "
        "MedSAM2's video script; volumes: off]",
    )
    group.add_argument(
        "--binarize-memory",
        dest="binarize_memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="threshold prompted masks before the memory encoder (sam2's binarize_mask_from_pts_for_mem_enc) "
        "[volumes: on; videos: off]",
    )


def requested_postprocessing(args: argparse.Namespace, kind: StudyKind) -> PostProcessingOptions:
    """The flags given, over the defaults of ``kind``."""
    return resolve(kind, argparse.Namespace(**requested_fields(args)))


def requested_fields(args: argparse.Namespace) -> dict[str, object]:
    """Only the post-processing flags that were given (for the service's PostProcessing message)."""
    names = ("largest_component", "fill_hole_area", "non_overlapping_objects", "binarize_memory")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
