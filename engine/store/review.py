"""The review store: decisions on near-duplicate pairs, per-case review states, mask versions,
users and roles, case claims and admin settings — one store for SQLite and PostgreSQL.

Where it lives (see :meth:`ReviewStore.for_dataset` and :mod:`engine.store.location`):

- ``$SEGWB_STORE_URL`` when set (``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``), else one
  SQLite file per workspace, ``<workspace>/segwb.sqlite``. Datasets share it, each under its own
  *dataset key* (the name of its workspace folder, e.g. ``nerve-1a2b3c4d``). Corrected masks are
  content-addressed PNGs in ``<workspace>/masks`` (or ``$SEGWB_MASKS_DIR``): with PostgreSQL,
  every app server must see the same workspace folder (a shared mount).
- A plain file path (``ReviewStore("x/review.sqlite")``, ``--store x/review.sqlite``) is a
  single-dataset file (dataset key ``''``), the layout of earlier versions; such per-dataset
  ``review.sqlite`` files in a dataset's workspace folder are imported into the workspace store
  the first time the dataset is opened (the old file is left untouched).

Guarantees:

- **Append-only audit log.** Every action is a row of ``events`` (who, when, what, note);
  UPDATE and DELETE on it fail on both backends. Undo is a new ``undo`` event referencing the
  undone one; undoing an undo redoes.
- **Current state in indexed tables.** ``current_decisions`` / ``current_case_states`` hold the
  effective event per pair/group/case, maintained in the same transaction as the log, so
  :meth:`ReviewStore.decisions` costs O(decided pairs), not O(events).
- **Optimistic concurrency.** A decision names the event it replaces (``base_event``): if the
  pair was decided meanwhile (or ``base_event`` is not its current decision), nothing is written
  and :class:`engine.errors.StaleDecision` says who decided what and when. Mask saves check
  ``base_version`` the same way (:class:`engine.errors.ConflictError`).
- **Users and roles.** viewer < annotator (saves mask versions, claims cases) < reviewer (decides
  pairs, sets review states, undoes) < admin (users, data roots, export roots). A store WITHOUT
  users is in *open single-user mode*: any author name is accepted (the demo, bound to
  127.0.0.1). Once one user exists, every write is checked here, in the engine: an unknown,
  disabled or under-privileged acting user raises :class:`engine.errors.PermissionDenied`.
- **Case claims** with a lease (:meth:`ReviewStore.claim`): who is editing a case now.
- **Transactions with retries** (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SERIALIZABLE``) and
  atomic mask files (temp + rename, written before the row, so a crash leaves an orphan file only).

:class:`ReviewStore` is a façade: each concern lives in its own module (``users``, ``sessions``, ``settings``,
``decisions``, ``claims``, ``masks``, ``legacy``) on top of :class:`engine.store.base.StoreBase`.

Example:
    >>> store = ReviewStore("/tmp/review.sqlite")                           # doctest: +SKIP
    >>> eid = store.record_decision("2_5", "2_13", "keep_a", "alice")       # doctest: +SKIP
    >>> d = store.decision_for("2_5", "2_13"); d.kept, d.dropped            # doctest: +SKIP
    (('2_5',), ('2_13',))
    >>> store.record_decision("2_5", "2_13", "keep_b", "bob", base_event=eid)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

import sqlalchemy as sa

from engine.errors import StoreError
from engine.store import tables as T
from engine.store.claims import ClaimsMixin
from engine.store.decisions import DecisionsMixin
from engine.store.legacy import LegacyMixin
from engine.store.location import MASKS_DIR, MASKS_DIR_ENV, STORE_NAME, STORE_URL_ENV, dataset_key, default_store_url
from engine.store.masks import MasksMixin
from engine.store.sessions import SessionsMixin
from engine.store.settings import SettingsMixin
from engine.store.users import UsersMixin

if TYPE_CHECKING:
    from engine.datasets.base import Dataset


class StoreOptions(TypedDict, total=False):
    """The keyword options of :class:`ReviewStore` besides ``path`` and ``dataset``."""

    masks_dir: str | Path | None
    timeout: float
    schema_version: int | None
    dataset_key: str


class ReviewStore(SessionsMixin, UsersMixin, SettingsMixin, DecisionsMixin, ClaimsMixin, MasksMixin, LegacyMixin):
    """Review decisions, case states, mask versions, users, claims and settings in one store.

    Args:
        path: a store URL (``sqlite:///PATH``, ``postgresql://USER@HOST/DB``) or a plain SQLite
            file path (created with its folder when missing; an EMPTY or non-SQLite file is refused).
        dataset: optional :class:`engine.datasets.Dataset`, used to load version 0 (the original).
        masks_dir: where mask PNGs go (default ``$SEGWB_MASKS_DIR``, else ``<store folder>/masks``
            for SQLite, ``<workspace>/masks`` for PostgreSQL).
        timeout: seconds to keep retrying when other writers hold the store.
        schema_version: create/migrate only up to this version (tests of migrations); default latest.
        dataset_key: which dataset's rows this object reads and writes (``''``: a single-dataset file).

    Raises:
        StoreError: not a store, an empty file, unreachable, or written by a newer program.
    """

    @classmethod
    def for_dataset(cls, ds: Dataset, path: str | Path | None = None, **kwargs: Unpack[StoreOptions]) -> ReviewStore:
        """Open the store holding a dataset's reviews.

        ``path`` None: ``$SEGWB_STORE_URL`` or the workspace store ``<workspace>/segwb.sqlite``,
        keyed by the dataset (a legacy ``<workdir>/review.sqlite`` is imported on first open).
        ``path`` a URL (``sqlite:///…``, ``postgresql://…``): that shared store, keyed by the dataset.
        ``path`` a plain file path: a single-dataset file (dataset key ``''``).
        """
        workdir = getattr(ds, "workdir", None)
        if path is not None and "://" not in str(path):
            return cls(path, dataset=ds, **kwargs)
        if path is None:
            if workdir is None and not os.environ.get(STORE_URL_ENV, "").strip():
                raise StoreError("the dataset has no workspace folder for a review store",
                                 hint="pass a store (CLI: --store URL) or set SEGWB_STORE_URL")
            root = Path(workdir).parent.parent if workdir is not None else None
            path = default_store_url(root)
            if "masks_dir" not in kwargs and not os.environ.get(MASKS_DIR_ENV) and root is not None:
                kwargs["masks_dir"] = root / MASKS_DIR
        kwargs.setdefault("dataset_key", dataset_key(ds))
        store = cls(path, dataset=ds, **kwargs)
        if workdir is not None:
            legacy = Path(workdir) / STORE_NAME
            if legacy.is_file() and legacy.resolve() != (store.path if store.is_sqlite else None):
                try:
                    store.import_legacy(legacy)
                except BaseException:
                    store.close()
                    raise
        return store

    def summary(self) -> dict[str, object]:
        """Counts for reports: events, current decisions by value, case states, corrected masks."""
        dec = self.decisions()
        states = self.case_states()
        ev = T.events
        n_events = int(self.tx.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(ev).where(
            ev.c.dataset == self.dataset_key)).scalar_one()))
        return {"path": str(self.path), "dataset_key": self.dataset_key, "schema_version": self.schema_version,
                "n_events": n_events, "decisions": dict(Counter(d.decision for d in dec.values())),
                "case_states": dict(Counter(s.state for s in states.values())),
                "n_corrected_masks": len(self.corrected_masks())}
