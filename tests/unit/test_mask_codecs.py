"""Bit-packed and run-length masks on the wire."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2.api.masks import decode_rle, encode_rle, pack_bits, unpack_bits
from medsam2.errors import InvalidInput


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 9), (64, 64)])
@pytest.mark.parametrize("fill", ["empty", "full", "random", "starts-on"])
def test_both_codecs_round_trip(shape: tuple[int, int], fill: str) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = {
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
        "random": rng.random(shape) > 0.5,
        "starts-on": np.eye(*shape, dtype=bool),
    }[fill]
    assert np.array_equal(unpack_bits(pack_bits(mask), *shape), mask)
    assert np.array_equal(decode_rle(encode_rle(mask), *shape), mask)


def test_packed_size_is_one_bit_per_pixel_rounded_up() -> None:
    assert len(pack_bits(np.ones((3, 5), bool))) == 2


def test_rle_of_a_mask_starting_with_foreground_begins_with_an_empty_run() -> None:
    runs = np.frombuffer(encode_rle(np.array([[1, 1, 0]], bool)), "<u4")
    assert runs.tolist() == [0, 2, 1]


@pytest.mark.parametrize(("data", "match"), [(b"\x00", "needs 2 bytes"), (b"\x00" * 3, "needs 2 bytes")])
def test_packed_mask_of_the_wrong_size_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        unpack_bits(data, 3, 5)


@pytest.mark.parametrize(("runs", "match"), [([1, 2], "cover 3 pixels"), ([20], "cover 20 pixels")])
def test_rle_that_does_not_cover_the_slice_is_refused(runs: list[int], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_rle(np.asarray(runs, "<u4").tobytes(), 3, 5)


def test_rle_with_a_partial_run_is_refused() -> None:
    with pytest.raises(InvalidInput, match="whole number"):
        decode_rle(b"\x01\x00\x00", 1, 1)
