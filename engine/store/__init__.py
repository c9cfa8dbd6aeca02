"""SQLite review store: decisions on near-duplicate pairs/groups, per-case review states and
mask versions, all in an append-only audit log. See :mod:`engine.store.review`.

Example:
    >>> from engine.store import ReviewStore
    >>> with ReviewStore.for_dataset(ds) as store:                          # doctest: +SKIP
    ...     store.record_decision("2_5", "2_13", "keep_a", "alice")
"""

from engine.store.review import (CASE_STATES, GROUP_DECISIONS, PAIR_DECISIONS, STORE_NAME, CaseState, Decision,
                                 Event, MaskVersion, ReviewStore, mask_digest)
from engine.store.schema import SCHEMA_VERSION

__all__ = ["ReviewStore", "Event", "Decision", "CaseState", "MaskVersion", "PAIR_DECISIONS", "GROUP_DECISIONS",
           "CASE_STATES", "STORE_NAME", "SCHEMA_VERSION", "mask_digest"]
