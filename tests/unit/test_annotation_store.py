"""The annotation store's folder names: one per principal, never outside the store, never shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam2.errors import CapacityExceeded, PreconditionFailed
from medsam2.server.annotation_store import AnnotationStore, principal_folder


@pytest.mark.parametrize("principal", ["../../etc", "CN=reader,O=Hospital/OU=Rad", "", "..", "a" * 300])
def test_folder_names_stay_inside_the_store(principal: str, tmp_path: Path) -> None:
    name = principal_folder(principal)
    assert "/" not in name and not name.startswith(".") and len(name) <= 60
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_distinct_principals_never_share_a_folder() -> None:
    assert principal_folder("a/b") != principal_folder("a_b")
    assert principal_folder("alice") == principal_folder("alice")


def test_a_store_without_a_root_refuses_and_says_how_to_enable_it() -> None:
    store = AnnotationStore(None)
    assert not store.enabled
    with pytest.raises(PreconditionFailed, match="--annotations-dir"):
        store.save(
            "alice",
            "x",
            np.zeros((1, 2, 2), np.uint8),
            np.ones((1, 2, 2), np.uint8),
            (1, 1, 1),
            modality="CT",
            video=False,
            provenance={},
        )


def test_a_full_folder_takes_no_more_cases(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path, max_bytes_per_principal=1)
    image, labels = np.zeros((2, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8)
    first = store.save("alice", "a", image, labels, (1, 1, 1), modality="CT", video=False, provenance={})
    with pytest.raises(CapacityExceeded, match=f"folder {first.folder} holds {first.size_bytes} bytes"):
        store.save("alice", "b", image, labels, (1, 1, 1), modality="CT", video=False, provenance={})
    assert len(list((tmp_path / first.folder).glob("*.npz"))) == 1
    store.save("bob", "a", image, labels, (1, 1, 1), modality="CT", video=False, provenance={})  # bob's own quota
