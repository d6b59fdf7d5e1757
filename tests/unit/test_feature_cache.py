"""The per-study image-feature LRU: bounded by bytes, pinned frames kept, newest kept."""

from __future__ import annotations

import numpy as np

from medsam2.engine.feature_cache import FeatureCache, FrameFeatures


def features(frame: int) -> FrameFeatures:
    """100 bytes of features, tagged with the frame."""
    return FrameFeatures(np.full(10, frame, np.float32), np.zeros(10, np.float32), np.zeros(5, np.float32))


def test_misses_encode_and_hits_do_not() -> None:
    cache = FeatureCache(features, max_bytes=1000)
    assert cache.get(3).feat_s0[0] == 3
    cache.get(3)
    assert cache.encoded == 1 and len(cache) == 1 and cache.nbytes == 100


def test_least_recently_used_frame_goes_first() -> None:
    cache = FeatureCache(features, max_bytes=200)
    cache.get(0), cache.get(1), cache.get(0), cache.get(2)
    cache.get(0)
    assert cache.encoded == 3, "frame 0 was used last before 2 arrived, so 1 was evicted"
    cache.get(1)
    assert cache.encoded == 4 and cache.nbytes <= 200


def test_pinned_frames_survive_and_the_newest_stays_even_over_budget() -> None:
    cache = FeatureCache(features, max_bytes=100)
    cache.get(0)
    cache.pin(0)
    cache.get(1)
    assert len(cache) == 2 and cache.nbytes == 200, "pinned 0 and the newest 1 both stay"
    cache.get(2)
    assert len(cache) == 2
    cache.get(0)
    assert cache.encoded == 3
    cache.unpin_all()
    assert len(cache) == 1 and cache.nbytes == 100


def test_clear_forgets_everything() -> None:
    cache = FeatureCache(features, max_bytes=1000)
    cache.get(0)
    cache.pin(0)
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
