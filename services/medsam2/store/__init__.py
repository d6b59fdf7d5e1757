"""Durable session records: a study reference plus an ordered journal, behind one small interface.

Everything else a session holds (slices, features, memory banks, masks) is a cache that any replica rebuilds by
fetching the study and replaying the journal; the engine is deterministic, so the rebuilt results are bit-identical.
"""

from medsam2.store.base import JournalEntry, SessionRecord, SessionStore, StoreUnavailable
from medsam2.store.factory import open_store

__all__ = ["JournalEntry", "SessionRecord", "SessionStore", "StoreUnavailable", "open_store"]
