"""``medsam2 segment``: one study from the terminal, no server."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from medsam2.backends.select import make_embedded_backend
from medsam2.cli.postprocessing_args import add_postprocessing_arguments, requested_postprocessing
from medsam2.engine.actions import (
    MaskStep,
    PropagateStep,
    Step,
    check_actions,
    object_descriptions,
    run_actions,
    shorthand_steps,
)
from medsam2.engine.backend import StageBackend
from medsam2.engine.postprocessing import PostProcessingOptions, StudyKind
from medsam2.engine.prompts import Box
from medsam2.engine.protocols import VolumeAnnotation
from medsam2.engine.tracker import Tracker, TrackerOptions
from medsam2.errors import InvalidInput
from medsam2.imaging.windowing import MODALITY_PRESETS, Preset, Window, normalize_modality, resolve_preset, to_uint8
from medsam2.io.actions_file import read_actions
from medsam2.io.dicom_seg import segment_specs
from medsam2.io.outputs import OUTPUT_SUFFIXES, check_output, write_result
from medsam2.io.video import is_video
from medsam2.io.video_masks import FirstFrameMasks, frame_names, read_first_frame_masks, write_frame_masks
from medsam2.io.volumes import Volume, read_volume
from medsam2.models.source import graphs_for_checkpoint, is_untrained, resolve_default_checkpoint, warn_untrained
from medsam2.settings import BackendChoice, Settings, add_arguments, resolve

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``segment`` command."""
    seg = sub.add_parser("segment", help="segment one volume from a box (or mask) on a key slice, without a server")
    seg.add_argument(
        "input",
        type=Path,
        help="DICOM folder or file, .nii/.nii.gz, MedSAM-style .npz, video (.mp4/.avi) or a frame folder",
    )
    seg.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when the DICOM folder holds several")
    seg.add_argument(
        "--out",
        type=Path,
        help=f"result by extension ({', '.join(OUTPUT_SUFFIXES)}): .dcm is a DICOM SEG; "
        "measurements go beside it as NAME.measurements.json (needed unless --out-masks is given)",
    )
    seg.add_argument(
        "--out-masks",
        type=Path,
        metavar="DIR",
        help="also write per-frame PNG masks into DIR (new or empty), as MedSAM2's video script does: in the "
        "layout of --mask-dir (a DAVIS palette PNG per frame, or NNN/ folders per object), else DAVIS",
    )
    seg.add_argument(
        "--slice", type=int, help="key slice K for --box/--mask; for DICOM, counted along the series sorted by position"
    )
    prompt = seg.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--box", help="X0,Y0,X1,Y1 in pixels of the key slice (x = column, y = row)")
    prompt.add_argument("--mask", type=Path, help="label volume at the input's geometry; its key slice is the prompt")
    prompt.add_argument(
        "--mask-dir",
        type=Path,
        metavar="DIR",
        help="a video's first-frame PNG masks, as MedSAM2's video script reads them: DIR/<first frame>.png with "
        "object ids as pixel values (DAVIS palette), or DIR/001/<first frame>.png, ... one per object; each "
        "object is a mask step on frame 0, then one propagate step",
    )
    prompt.add_argument(
        "--actions",
        type=Path,
        metavar="FILE",
        help="JSON list of steps (box, click, mask, propagate; see docs/actions.md); "
        "--box B --slice K is the same as a box step and a propagate step",
    )
    seg.add_argument(
        "--range",
        dest="slice_range",
        help="FIRST,LAST: slices to propagate through (default: all; with --actions, for propagate "
        "steps without their own range)",
    )
    seg.add_argument(
        "--preset",
        choices=[p.value for p in Preset],
        default=Preset.AUTO.value,
        help="intensity preset: CT windows, 'percentile' for MR/PET, 'none' for uint8 "
        "[auto: from the Modality, CT->abdomen, MR/PT->percentile, US/XC/ES->none]",
    )
    seg.add_argument(
        "--modality",
        type=str.upper,
        choices=sorted(MODALITY_PRESETS),
        help="the input's DICOM Modality, for inputs that carry none (NIfTI, npz); picks the 'auto' "
        "preset; a DICOM input's own Modality must agree",
    )
    add_postprocessing_arguments(seg)
    seg.add_argument("--window", help="custom CT window WIDTH,LEVEL in HU (overrides --preset)")
    source = seg.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="MedSAM2 checkpoint; its graphs are exported once and cached")
    source.add_argument("--graphs", type=Path, help="folder of exported ONNX graphs (or a model repository)")
    add_arguments(seg, BackendChoice, "backend")
    seg.add_argument(
        "--early-stop",
        type=int,
        default=0,
        metavar="K",
        help="stop after K consecutive slices without the object (0: never, as the reference)",
    )
    seg.add_argument("--json", action="store_true", help="print the summary as JSON")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    seg.set_defaults(run=run_segment)


def parse_box(text: str) -> Box:
    """'X0,Y0,X1,Y1' -> Box."""
    values = _numbers(text, 4, "--box", "X0,Y0,X1,Y1")
    return Box(*values)


def parse_pair(text: str, flag: str, form: str) -> tuple[float, float]:
    """'A,B' -> (A, B)."""
    a, b = _numbers(text, 2, flag, form)
    return a, b


def _numbers(text: str, count: int, flag: str, form: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InvalidInput(f"{flag} must be {form} (numbers separated by commas), got {text!r}") from None
    if len(values) != count:
        raise InvalidInput(f"{flag} must be {form}: {count} numbers, got {len(values)} in {text!r}")
    return values


def _slice_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    first, last = parse_pair(text, "--range", "FIRST,LAST")
    if first != int(first) or last != int(last):
        raise InvalidInput(f"--range must be whole slice numbers, got {text!r}")
    return int(first), int(last)


def _model_version(args: argparse.Namespace) -> str:
    """What the SEG's algorithm identification names as the model: the checkpoint or graphs used."""
    source = args.checkpoint or args.graphs
    return (source.name if source is not None else "MedSAM2 default checkpoint")[:64]


def script_layout(args: argparse.Namespace, first: FirstFrameMasks | None) -> None:
    """MedSAM2's video script turns the non-overlapping constraint off for per-object PNGs (SA-V's objects may
    overlap); unless --[no-]non-overlapping says otherwise, so does a --mask-dir of per-object folders."""
    if first is not None and first.per_object and args.non_overlapping_objects is None:
        args.non_overlapping_objects = False


def mask_dir_steps(
    folder: Path, volume: Volume, slice_range: tuple[int, int] | None = None
) -> tuple[list[Step], dict[int, np.ndarray], FirstFrameMasks]:
    """MedSAM2's video script as steps: each object's first-frame PNG mask on frame 0, then one forward pass."""
    names = frame_names(volume.frame_names, volume.voxels.shape[0])
    first = read_first_frame_masks(folder, names[0], volume.voxels.shape[1:])
    steps: list[Step] = []
    masks: dict[int, np.ndarray] = {}
    for index, (obj_id, mask) in enumerate(sorted(first.masks.items())):
        steps.append(MaskStep(index, obj_id, 0, Path(folder)))
        masks[index] = mask
    steps.append(PropagateStep(len(steps), slice_range))
    return steps, masks, first


def _steps(args: argparse.Namespace, volume: Volume) -> tuple[list[Step], dict[int, np.ndarray]]:
    """The steps to run: the actions file's, or the --box/--mask shorthand (a prompt step and a propagate step)."""
    if args.actions is not None:
        if args.slice is not None:
            raise InvalidInput("--slice goes with --box or --mask: the steps of an actions file name their slices")
        actions = read_actions(args.actions)
        return actions.steps, actions.masks
    if args.slice is None:
        raise InvalidInput(f"--{'box' if args.box is not None else 'mask'} needs --slice K, the key slice")
    slice_range = _slice_range(args.slice_range)
    if args.box is not None:
        return shorthand_steps(1, args.slice, box=parse_box(args.box), slice_range=slice_range), {}
    labels = read_volume(args.mask).voxels
    if labels.shape != volume.voxels.shape:
        raise InvalidInput(f"--mask has shape {labels.shape}, the volume is {volume.voxels.shape}")
    if not 0 <= args.slice < labels.shape[0]:
        raise InvalidInput(f"slice {args.slice} is out of range: the study has {labels.shape[0]} slices")
    return shorthand_steps(1, args.slice, mask_path=args.mask, slice_range=slice_range), {0: labels[args.slice] > 0}


def _modality(args: argparse.Namespace, volume: Volume) -> str | None:
    """The input's Modality, or --modality for inputs without one; a contradiction is an error."""
    own = normalize_modality(volume.modality)
    if own is not None and args.modality is not None and own != args.modality:
        raise InvalidInput(f"--modality {args.modality} contradicts the input's DICOM Modality {own}")
    return own or args.modality


def make_backend(args: argparse.Namespace, settings: Settings) -> StageBackend:
    """The chosen backend over the chosen graphs or checkpoint."""
    checkpoint = args.checkpoint
    if args.graphs is None and checkpoint is None:
        checkpoint, trained = resolve_default_checkpoint(settings)
        if not trained:
            warn_untrained(checkpoint)
    elif checkpoint is not None and is_untrained(checkpoint):
        warn_untrained(checkpoint)
    choice = resolve(BackendChoice, args)
    if choice.backend == "torch":
        if checkpoint is None:
            raise InvalidInput("the torch backend needs --checkpoint (it runs the PyTorch modules, not ONNX graphs)")
        from medsam2.models.extras import require_export_extra

        torch_backend = require_export_extra("medsam2_export.torch_backend")
        precision = "fp32" if choice.precision == "auto" else choice.precision
        return torch_backend.TorchBackend(checkpoint, precision=precision, threads=settings.threads)
    graphs = args.graphs if args.graphs is not None else graphs_for_checkpoint(checkpoint, settings)
    return make_embedded_backend(graphs, backend=choice.backend, precision=choice.precision, threads=settings.threads)


def model_frames(volume: Volume, slices: np.ndarray, preset: str, window: Window | None) -> np.ndarray:
    """What the model sees: a colour video's RGB frames when it is not windowed, else the uint8 slices."""
    if volume.rgb is None:
        return slices
    if window is None and resolve_preset(preset, volume.modality, np.dtype(np.uint8), is_video=True) is Preset.NONE:
        return volume.rgb
    log.warning("a window or intensity preset applies to grey values: the colour video is segmented as grey")
    return slices


def tracker_options(options: PostProcessingOptions, early_stop: int = 0) -> TrackerOptions:
    """The tracker's share of a session's post-processing choices."""
    return TrackerOptions(
        early_stop_absent=early_stop,
        fill_hole_area=options.fill_hole_area,
        non_overlapping_objects=options.non_overlapping_objects,
        binarize_memory=options.binarize_memory,
    )


def check_outputs(args: argparse.Namespace, volume: Volume | None = None) -> None:
    """--out and/or --out-masks, checked before any work."""
    if args.out is None and args.out_masks is None:
        raise InvalidInput("give --out FILE (a label map, SEG or overlay) and/or --out-masks DIR (per-frame PNGs)")
    if args.out is not None:
        check_output(args.out, volume)
    if args.out_masks is not None and args.out_masks.exists():
        if not args.out_masks.is_dir() or any(args.out_masks.iterdir()):
            raise InvalidInput(f"--out-masks {args.out_masks}: exists and is not an empty folder")


def run_segment(args: argparse.Namespace, settings: Settings) -> int:
    """Segment one study with MedSAM2's protocol for its kind (and any corrections an actions file gives)."""
    check_outputs(args)
    volume = read_volume(args.input, args.series)
    check_outputs(args, volume)
    kind: StudyKind = "video" if is_video(volume) else "volume"
    window = Window(*parse_pair(args.window, "--window", "WIDTH,LEVEL")) if args.window else None
    modality = _modality(args, volume)
    first: FirstFrameMasks | None = None
    if args.mask_dir is not None:
        if args.slice is not None:
            raise InvalidInput("--mask-dir prompts the first frame: --slice does not apply")
        steps, step_masks, first = mask_dir_steps(args.mask_dir, volume, _slice_range(args.slice_range))
    else:
        steps, step_masks = _steps(args, volume)
    script_layout(args, first)
    postprocessing = requested_postprocessing(args, kind)
    default_range = _slice_range(args.slice_range) if args.actions is not None else None
    check_actions(steps, volume.voxels.shape, step_masks)  # every step fits the study before a model loads
    slices = to_uint8(volume.voxels, args.preset, window, modality=modality, is_video=kind == "video")
    backend = make_backend(args, settings)
    frames = model_frames(volume, slices, args.preset, window)
    tracker = Tracker(backend, frames, tracker_options(postprocessing, args.early_stop))
    annotation = VolumeAnnotation(tracker, keep_largest_component=postprocessing.largest_component)
    started = time.perf_counter()
    progress = None if args.no_progress else _progress_bar()
    run_actions(
        annotation,
        steps,
        step_masks,
        default_range=default_range,
        on_plan=(lambda n: _grow(progress, n)) if progress is not None else None,
        on_frame=(lambda *_: progress.update(1)) if progress is not None else None,
    )
    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - started
    masks = annotation.masks()
    written: list[Path] = []
    if args.out is not None:
        specs = segment_specs(object_descriptions(steps), sorted(masks))
        written = write_result(
            args.out, masks, volume, model_version=_model_version(args), segments=specs, display=slices
        )
    if args.out_masks is not None:
        layout, palette = (first.per_object, first.palette) if first is not None else (False, None)
        names = frame_names(volume.frame_names, volume.voxels.shape[0])
        write_frame_masks(args.out_masks, masks, names, per_object=layout, palette=palette)
    per_object = {
        str(obj_id): {
            "voxels": int(mask.sum()),
            "volume_ml": round(int(mask.sum()) * volume.voxel_ml, 4),
            "slices_with_mask": int(mask.any(axis=(1, 2)).sum()),
        }
        for obj_id, mask in masks.items()
    }
    voxels = sum(o["voxels"] for o in per_object.values())
    summary = {
        "input": str(args.input),
        "output": str(args.out),
        "slices": int(tracker.num_frames),
        "slices_with_mask": int(np.logical_or.reduce(list(masks.values())).any(axis=(1, 2)).sum()),
        "seconds": round(seconds, 3),
        "voxels": voxels,
        "volume_ml": round(voxels * volume.voxel_ml, 4),
        "objects": per_object,
        "backend": backend.name,
        "features_encoded": tracker.features.encoded,
        "measurements": next((str(p) for p in written if p.name.endswith(".measurements.json")), None),
        "postprocessing": {
            "largest_component": postprocessing.largest_component,
            "fill_hole_area": postprocessing.fill_hole_area,
            "non_overlapping_objects": postprocessing.non_overlapping_objects,
            "binarize_memory": postprocessing.binarize_memory,
        },
    }
    if args.out_masks is not None:
        summary["out_masks"] = str(args.out_masks)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"segmented {summary['slices']} slices in {seconds:.1f} s with {backend.name}: "
            f"{voxels} voxels, {summary['volume_ml']:.2f} mL on {summary['slices_with_mask']} slices -> {args.out}"
        )
    backend.close()
    return 0


def _progress_bar():  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=0, unit="slice", desc="propagating")


def _grow(progress, planned: int) -> None:  # noqa: ANN001
    progress.total += planned
    progress.refresh()
