"""The review store: decisions, case review states, mask versions, users and roles, case claims and
admin settings, on SQLite (default) or PostgreSQL (``SEGWB_STORE_URL``), with one append-only audit
log. It sits below :mod:`engine.curation` (which takes a store as an argument) and imports none of it.

=============================  ====================================================================
:mod:`.review`                 :class:`ReviewStore`, the façade: one class, composed of the concerns
                               below (the guarantees are listed there)
:mod:`.records`                records and vocabularies, each defined once: the pair decisions
                               (values, labels, shortcuts), case states, roles, the pair key,
                               :class:`Decision` & co., :func:`mask_digest`
:mod:`.location`               where a store lives: URLs, the masks folder, dataset keys
:mod:`.db`                     engines for SQLite / PostgreSQL and the one transaction helper
:mod:`.tables`, :mod:`.schema`  the tables, the schema versions and the one migration list
:mod:`.projection`             the current state projected from the log, and the read cache
:mod:`.base`                   the open store: connection, permission gate, audit-log writes
:mod:`.users`                  accounts, roles, sign-in, the admin log
:mod:`.signin`                 password policy, sign-in throttling and lock-out, client address
:mod:`.sessions`               signed-in browser sessions (team mode's cookie), idle/lifetime, sign-out
:mod:`.settings`               data roots and export roots
:mod:`.decisions`              pair and group decisions, undo, case review states
:mod:`.claims`                 case claims (leases)
:mod:`.masks`                  mask versions and their PNG files
:mod:`.legacy`                 import of legacy per-dataset ``review.sqlite`` files
=============================  ====================================================================

Importing this package is light (numpy only): :class:`ReviewStore` and :data:`SCHEMA_VERSION`, which
need SQLAlchemy, load on first use.

Example:
    >>> from engine.store import ReviewStore
    >>> with ReviewStore.for_dataset(ds) as store:                          # doctest: +SKIP
    ...     eid = store.record_decision("2_5", "2_13", "keep_a", "alice")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.store.location import (
    MASKS_DIR_ENV,
    STORE_NAME,
    STORE_URL_ENV,
    WORKSPACE_STORE_NAME,
    dataset_key,
    default_store_url,
)
from engine.store.records import (
    CASE_STATES,
    DEFAULT_CLAIM_TTL,
    GROUP_DECISIONS,
    LOCAL_OPERATOR,
    PAIR_DECISIONS,
    ROLES,
    CaseState,
    Claim,
    Decision,
    Event,
    MaskVersion,
    User,
    mask_digest,
)

if TYPE_CHECKING:
    from engine.store.review import ReviewStore
    from engine.store.schema import SCHEMA_VERSION

__all__ = ["ReviewStore", "Event", "Decision", "CaseState", "MaskVersion", "User", "Claim", "PAIR_DECISIONS",
           "GROUP_DECISIONS", "CASE_STATES", "ROLES", "STORE_NAME", "WORKSPACE_STORE_NAME", "STORE_URL_ENV",
           "MASKS_DIR_ENV", "SCHEMA_VERSION", "DEFAULT_CLAIM_TTL", "LOCAL_OPERATOR", "mask_digest", "dataset_key",
           "default_store_url"]


def __getattr__(name: str) -> object:
    """Load the database layer on first use of :class:`ReviewStore` or :data:`SCHEMA_VERSION`."""
    if name == "ReviewStore":
        from engine.store.review import ReviewStore

        return ReviewStore
    if name == "SCHEMA_VERSION":
        from engine.store.schema import SCHEMA_VERSION

        return SCHEMA_VERSION
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
