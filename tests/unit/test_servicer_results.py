"""What the servicer keeps and returns per session: objects, their names, label values, resets and slice ranges.

The servicer runs in-process on the FakeBackend (its masks follow the boxes), so each expectation is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from servicer_calls import SIDE, SLICES, Call, box_prompt, call_stream, call_unary, create, make_servicer, volume

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.server.servicer import SegmentationServicer


@pytest.fixture()
def servicer(tmp_path: Path) -> SegmentationServicer:
    return make_servicer(None, tmp_path)


@pytest.fixture()
def sid(servicer: SegmentationServicer) -> str:
    """Objects 4 (named) and 9, propagated."""
    sid = create(servicer, volume(), "", Call()).session_id
    named = box_prompt(sid, 4, 2, object_info=pb.ObjectInfo(label="liver lesion", colour_rgb=[10, 20, 30]))
    assert call_unary(servicer.AddPrompt, named, Call()) is not None
    other = pb.AddPromptRequest(session_id=sid, object_id=9, slice=2, box=pb.Box(x0=44, y0=44, x1=60, y1=60))
    assert call_unary(servicer.AddPrompt, other, Call()) is not None
    assert call_stream(servicer.Propagate, pb.PropagateRequest(session_id=sid), Call())
    return sid


def _labels(servicer: SegmentationServicer, sid: str, values: int) -> tuple[np.ndarray, list[pb.LabelEntry]]:
    request = pb.GetResultRequest(session_id=sid, format=pb.RESULT_FORMAT_RAW_LABELS, label_values=values)
    chunks = call_stream(servicer.GetResult, request, Call())
    assert chunks is not None
    data = b"".join(c.data for c in chunks)
    return np.frombuffer(data, "<u2").reshape(tuple(chunks[0].shape)), list(chunks[0].labels)


def test_labels_are_ranks_or_object_ids_and_carry_the_objects_names(servicer: SegmentationServicer, sid: str) -> None:
    ranks, entries = _labels(servicer, sid, pb.LABEL_VALUES_RANKS)
    ids, id_entries = _labels(servicer, sid, pb.LABEL_VALUES_OBJECT_IDS)
    assert ranks.shape == (SLICES, SIDE, SIDE)
    assert set(np.unique(ranks)) == {0, 1, 2} and set(np.unique(ids)) == {0, 4, 9}
    assert np.array_equal(ranks == 1, ids == 4) and np.array_equal(ranks == 2, ids == 9)
    assert [(e.value, e.object_id) for e in entries] == [(1, 4), (2, 9)]
    assert [(e.value, e.object_id) for e in id_entries] == [(4, 4), (9, 9)]
    assert (entries[0].name, list(entries[0].colour_rgb)) == ("liver lesion", [10, 20, 30])
    assert entries[1].name == "object 9"


def test_a_reset_object_leaves_the_results_and_the_others_stay(servicer: SegmentationServicer, sid: str) -> None:
    before, _ = _labels(servicer, sid, pb.LABEL_VALUES_OBJECT_IDS)
    session = servicer.ResetObjects(pb.ResetObjectsRequest(session_id=sid, object_ids=[4]), Call())
    assert list(session.object_ids) == [9]
    after, entries = _labels(servicer, sid, pb.LABEL_VALUES_OBJECT_IDS)
    assert [e.object_id for e in entries] == [9]
    assert np.array_equal(after == 9, before == 9) and not (after == 4).any()
    servicer.ResetObjects(pb.ResetObjectsRequest(session_id=sid, all=True), Call())
    assert not _labels(servicer, sid, pb.LABEL_VALUES_OBJECT_IDS)[0].any()
    assert list(servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call()).object_ids) == []


def test_get_slices_returns_each_stored_slice_in_a_range(servicer: SegmentationServicer, sid: str) -> None:
    ids, _ = _labels(servicer, sid, pb.LABEL_VALUES_OBJECT_IDS)
    request = pb.GetSlicesRequest(session_id=sid, first_slice=1, last_slice=3)
    slices = call_stream(servicer.GetSlices, request, Call())
    assert [(s.slice, s.done, s.total, getattr(s, "pass"), s.final) for s in slices] == [
        (1, 1, 3, "stored", True),
        (2, 2, 3, "stored", True),
        (3, 3, 3, "stored", True),
    ]
    assert all(sorted(o.object_id for o in s.objects) == [4, 9] for s in slices)
    assert all(o.object_score == 5.0 for s in slices for o in s.objects)  # the FakeBackend's presence logit
    assert all((ids[s.slice] == 4).any() for s in slices)


def test_a_propagation_over_a_range_tracks_only_that_range(servicer: SegmentationServicer) -> None:
    sid = create(servicer, volume(), "", Call()).session_id
    call_unary(servicer.AddPrompt, box_prompt(sid, 1, 2), Call())
    streamed = call_stream(servicer.Propagate, pb.PropagateRequest(session_id=sid, first_slice=1, last_slice=3), Call())
    assert sorted({r.slice for r in streamed}) == [1, 2, 3]
    labels, _ = _labels(servicer, sid, pb.LABEL_VALUES_OBJECT_IDS)
    assert labels[1:4].any(axis=(1, 2)).all() and not labels[0].any() and not labels[4].any()
    history = servicer.GetSession(pb.GetSessionRequest(session_id=sid), Call()).history
    assert list(history) == []  # a session without a store keeps no journal
