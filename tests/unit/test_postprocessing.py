"""MedSAM2's post-processing defaults per kind, overrides, and sam2's non-overlapping constraint."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.overlap import apply_non_overlapping
from medsam2.engine.postprocessing import PostProcessingOptions, resolve
from medsam2.engine.tracker import FrameResult
from medsam2.errors import InvalidInput


def test_defaults_are_the_scripts_per_kind() -> None:
    assert resolve("volume") == PostProcessingOptions(
        largest_component=True, fill_hole_area=8, non_overlapping_objects=False, binarize_memory=True
    )
    assert resolve("video") == PostProcessingOptions(
        largest_component=False, fill_hole_area=0, non_overlapping_objects=True, binarize_memory=False
    )


def test_only_set_proto_fields_override() -> None:
    requested = pb.PostProcessing(non_overlapping_objects=False, fill_hole_area=0)
    got = resolve("volume", requested)
    assert got.fill_hole_area == 0 and not got.non_overlapping_objects
    assert got.largest_component and got.binarize_memory  # unset: the volume defaults
    assert resolve("video", pb.PostProcessing()) == resolve("video")


@pytest.mark.parametrize("area", [-1, 128 * 128 + 1, 2.5, True])
def test_bad_fill_hole_area_is_refused(area: object) -> None:
    with pytest.raises(InvalidInput, match=r"fill_hole_area must be 0\.\.16384 low-resolution pixels"):
        resolve(
            "video",
            PostProcessingOptions(
                largest_component=False,
                fill_hole_area=area,
                non_overlapping_objects=True,
                binarize_memory=False,  # type: ignore[arg-type]
            ),
        )


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown study kind 'slide'"):
        resolve("slide")  # type: ignore[arg-type]


def test_constraint_keeps_the_largest_logit_and_clamps_the_rest() -> None:
    logits = np.array([[[3.0, -2.0, 1.0, 0.5]], [[2.0, 4.0, -20.0, 0.5]]], np.float32)
    got = apply_non_overlapping(logits)
    # Pixel 0: object 0 wins, object 1 clamped to -10; pixel 1: object 1 wins; pixel 2: object 0 wins and object
    # 1 stays at -20 (already below -10); pixel 3: a tie goes to the first object, as torch.argmax does.
    np.testing.assert_array_equal(got, [[[3.0, -10.0, 1.0, 0.5]], [[-10.0, 4.0, -20.0, -10.0]]])
    single = logits[:1]
    assert apply_non_overlapping(single) is single


def test_frame_masks_apply_the_constraint_only_when_asked() -> None:
    low = np.full((2, 128, 128), 1.0, np.float32)
    low[1] = 2.0  # both objects everywhere; object 2 has the larger logit
    overlapping = FrameResult(0, (1, 2), low).masks(64, 64)
    assert overlapping.all()
    exclusive = FrameResult(0, (1, 2), low, non_overlapping=True).masks(64, 64)
    assert not exclusive[0].any() and exclusive[1].all()
