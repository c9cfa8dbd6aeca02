"""The review store of :mod:`engine.curation`: decisions, case review states, mask versions, users and
roles, case claims and admin settings, on SQLite (default) or PostgreSQL (``SEGWB_STORE_URL``), with
one append-only audit log. See :mod:`engine.curation.store.review` for the guarantees.

Example:
    >>> from engine.curation.store import ReviewStore
    >>> with ReviewStore.for_dataset(ds) as store:                          # doctest: +SKIP
    ...     eid = store.record_decision("2_5", "2_13", "keep_a", "alice")
"""

from engine.curation.store.review import (CASE_STATES, DEFAULT_CLAIM_TTL, GROUP_DECISIONS, LOCAL_OPERATOR,
                                          MASKS_DIR_ENV, PAIR_DECISIONS, ROLES, STORE_NAME, STORE_URL_ENV,
                                          WORKSPACE_STORE_NAME, CaseState, Claim, Decision, Event, MaskVersion,
                                          ReviewStore, User, dataset_key, default_store_url, mask_digest)
from engine.curation.store.schema import SCHEMA_VERSION

__all__ = ["ReviewStore", "Event", "Decision", "CaseState", "MaskVersion", "User", "Claim", "PAIR_DECISIONS",
           "GROUP_DECISIONS", "CASE_STATES", "ROLES", "STORE_NAME", "WORKSPACE_STORE_NAME", "STORE_URL_ENV",
           "MASKS_DIR_ENV", "SCHEMA_VERSION", "DEFAULT_CLAIM_TTL", "LOCAL_OPERATOR", "mask_digest", "dataset_key",
           "default_store_url"]
