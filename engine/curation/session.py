"""Edit session of the Mask editor: the undo/redo stack of one case and the save flow with
optimistic concurrency (a save names the version it started from; the store refuses it when
someone saved meanwhile, and the session records that conflict for the reviewer to resolve).

Pure Python (no streamlit); the page keeps one :class:`EditSession` per (dataset, case) in its
session state and renders the conflict choice.

Example:
    >>> sess = EditSession.start(ds, store, "1_1")                          # doctest: +SKIP
    >>> sess.stack.push(new_mask)                                         # doctest: +SKIP
    >>> v = sess.save(store, "ana", "traced the nerve")                   # doctest: +SKIP
    >>> v if v is not None else sess.conflict["author"]                    # doctest: +SKIP
    3
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ConflictError, MaskError

if TYPE_CHECKING:
    from engine.datasets import Dataset
    from engine.store import ReviewStore

class EditStack:
    """Undo/redo history of whole masks (each applied stroke batch = one entry).

    Masks are kept zlib-compressed (label maps compress 50-500×), so a long session stays
    small. ``limit`` bounds the entries; the oldest are dropped (the start stays reachable
    through :meth:`reset`).

    Example:
        >>> s = EditStack(np.zeros((4, 4), np.uint8))
        >>> s.push(np.ones((4, 4), np.uint8)); s.undo(); int(s.current.sum())
        0
    """

    def __init__(self, initial: np.ndarray, limit: int = 100):
        m = np.asarray(initial)
        if m.ndim != 2:
            raise MaskError(f"mask must be 2-D (H,W), got shape {m.shape}", hint="pass one label map")
        self.shape = (int(m.shape[0]), int(m.shape[1]))
        self.limit = max(2, int(limit))
        self._start = self._pack(m)
        self._items: list[bytes] = [self._start]
        self._pos = 0

    def _pack(self, m: np.ndarray) -> bytes:
        a = np.ascontiguousarray(m, np.uint8)
        if a.shape != self.shape:
            raise MaskError(f"mask is {a.shape}, this edit history is for {self.shape}", hint="edit one case at a time")
        return zlib.compress(a.tobytes(), 1)

    def _unpack(self, b: bytes) -> np.ndarray:
        return np.frombuffer(zlib.decompress(b), np.uint8).reshape(self.shape).copy()

    @property
    def current(self) -> np.ndarray:
        """The mask after the edits so far (a copy, uint8 (H,W))."""
        return self._unpack(self._items[self._pos])

    @property
    def start(self) -> np.ndarray:
        """The mask editing started from."""
        return self._unpack(self._start)

    def push(self, mask: np.ndarray) -> bool:
        """Add an edit (drops the redo branch). Returns False (and adds nothing) if unchanged."""
        b = self._pack(mask)
        if b == self._items[self._pos]:
            return False
        self._items = self._items[: self._pos + 1] + [b]
        if len(self._items) > self.limit:
            self._items = self._items[-self.limit:]
        self._pos = len(self._items) - 1
        return True

    def undo(self) -> bool:
        if self._pos == 0:
            return False
        self._pos -= 1
        return True

    def redo(self) -> bool:
        if self._pos >= len(self._items) - 1:
            return False
        self._pos += 1
        return True

    @property
    def can_undo(self) -> bool:
        return self._pos > 0

    @property
    def can_redo(self) -> bool:
        return self._pos < len(self._items) - 1

    @property
    def position(self) -> int:
        """Edits applied on top of the oldest kept entry."""
        return self._pos

    @property
    def n_redo(self) -> int:
        return len(self._items) - 1 - self._pos

    @property
    def dirty(self) -> bool:
        """The current mask differs from the start."""
        return self._items[self._pos] != self._start

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start over from ``mask`` (default: the original start)."""
        if mask is not None:
            self._start = self._pack(mask)
        self._items = [self._start]
        self._pos = 0


# ----------------------------------------------------------------------------------- versions

def version_mask(ds: Dataset, store: ReviewStore, case_id: str, version: int) -> np.ndarray:
    """uint8 (H,W) mask of a version (0 = the dataset's original; empty for an unlabelled case).

    Args:
        ds: the :class:`engine.datasets.Dataset` the store belongs to.
        store: its :class:`engine.store.ReviewStore`.
        case_id: the case.
        version: the version number (0 = original ground truth).
    """
    case = ds.case(case_id)
    mv = store.mask_version(case_id, version) if version else None
    if version == 0 or (mv is not None and mv.is_original):
        if not case.labelled:
            return np.zeros((case.height, case.width), np.uint8)
        return ds.load_mask(case)
    return store.load_mask_version(case_id, version)


def version_history(ds: Dataset, store: ReviewStore, case_id: str) -> list[dict[str, Any]]:
    """Versions of a case, oldest first; version 0 is the dataset's original.

    Returns:
        ``[{"version", "author", "created" (ISO UTC, "" for the original), "note", "area"
        (foreground pixels), "from" ("edit of N" / "revert to N"; None for the original)}]``.
    """
    case = ds.case(case_id)
    original_area = int(max(case.mask_area, 0))
    rows: list[dict[str, Any]] = [{"version": 0, "author": "dataset", "created": "",
                                   "note": "original ground truth" if case.labelled else "no ground truth (empty)",
                                   "area": original_area, "from": None}]
    for mv in store.mask_history(case_id):
        frm = f"revert to {mv.reverted_from}" if mv.reverted_from is not None else f"edit of {mv.base_version}"
        rows.append({"version": mv.version, "author": mv.author, "created": mv.created, "note": mv.note,
                     "area": int(mv.area if mv.area is not None else original_area), "from": frm})
    return rows


# ----------------------------------------------------------------------------------- edit session

@dataclass
class EditSession:
    """Unsaved editing state of one case.

    Attributes:
        case_id: the case.
        base_version: newest saved version when editing started — what a save is checked against.
        base_digest: :func:`engine.store.mask_digest` of that version's mask (is there anything to save?).
        source: where the starting mask came from (for people).
        stack: undo/redo history of masks (:class:`EditStack`).
        nonce: bumped to clear the canvas (new component key).
        conflict: set when a save found a newer version: ``{"current", "author", "created", "note"}``.
        show_theirs: the conflict panel shows the other version.
    """

    case_id: str
    base_version: int
    base_digest: str
    source: str
    stack: EditStack
    nonce: int = 0
    conflict: dict[str, Any] | None = None
    show_theirs: bool = False

    @classmethod
    def start(cls, ds: Dataset, store: ReviewStore, case_id: str, mask: np.ndarray | None = None,
              source: str | None = None, nonce: int = 0) -> "EditSession":
        """A session based on the newest saved version of ``case_id``.

        Args:
            mask: uint8 (H,W) mask to start editing from (default: that newest version's mask).
            source: a label for where ``mask`` came from (default: the version).
            nonce: the previous session's nonce (the new one gets ``nonce + 1``, a fresh canvas).
        """
        from engine.store import mask_digest

        latest = store.latest_mask_version(case_id)
        base_mask = version_mask(ds, store, case_id, latest)
        start = base_mask if mask is None else mask
        src = source or (f"version {latest}" + (" (dataset original)" if latest == 0 else " (latest saved)"))
        return cls(case_id, latest, mask_digest(base_mask), src, EditStack(start), nonce=nonce + 1)

    def restart(self, ds: Dataset, store: ReviewStore, mask: np.ndarray | None = None,
                source: str | None = None) -> "EditSession":
        """A new session of the same case (from the newest version, or ``mask``); this one is left as is."""
        return EditSession.start(ds, store, self.case_id, mask, source, nonce=self.nonce)

    @property
    def has_changes(self) -> bool:
        """The current mask differs from the version editing is based on."""
        from engine.store import mask_digest

        return mask_digest(self.stack.current) != self.base_digest

    def record_conflict(self, store: ReviewStore, exc: ConflictError) -> None:
        """Remember who saved the newer version that refused a save (fills :attr:`conflict`)."""
        cur = int(exc.current_version or store.latest_mask_version(self.case_id))
        mv = store.mask_version(self.case_id, cur)
        self.conflict = {"current": cur, "author": mv.author if mv else "someone",
                         "created": mv.created if mv else "", "note": mv.note if mv else ""}

    def mark_saved(self, version: int) -> None:
        """After a successful save: the saved mask becomes the new base, with a fresh history."""
        from engine.store import mask_digest

        mask = self.stack.current
        self.base_version = int(version)
        self.base_digest = mask_digest(mask)
        self.source = f"version {version} (saved by you)"
        self.stack = EditStack(mask)
        self.conflict = None
        self.show_theirs = False
        self.nonce += 1

    def save(self, store: ReviewStore, author: str, note: str = "", *, on_top: bool = False) -> int | None:
        """Save the current mask as a new version checked against the base version.

        Args:
            store: the :class:`engine.store.ReviewStore`.
            author: who saves.
            note: why.
            on_top: save on top of the conflicting version in :attr:`conflict` (the reviewer saw it).

        Returns:
            the new version number, or None when someone saved meanwhile (:attr:`conflict` then
            says who and when; nothing was written).
        """
        base = int(self.conflict["current"]) if on_top and self.conflict is not None else self.base_version
        try:
            v = store.save_mask_version(self.case_id, self.stack.current, author, note, base_version=base)
        except ConflictError as exc:
            self.record_conflict(store, exc)
            return None
        self.mark_saved(v)
        return v

    def resolve_conflict(self, ds: Dataset, store: ReviewStore, author: str, note: str, how: str) -> int | None:
        """Resolve :attr:`conflict` by saving on top of the colleague's version.

        Args:
            how: ``"mine"`` — save my mask as it is, REPLACING theirs (their version stays in the
                history); ``"union"`` — save the union of theirs and mine
                (:func:`engine.curation.masks.union_masks`: nothing either labelled is lost; where
                both labelled a pixel with different classes, mine wins). The note records which.

        Returns:
            the new version, or None when yet another version was saved meanwhile (:attr:`conflict`
            then names it; nothing was written).
        """
        from engine.curation.masks import union_masks

        if self.conflict is None:
            raise MaskError("there is no save conflict to resolve", hint="save normally")
        if how not in ("mine", "union"):
            raise MaskError(f"unknown merge {how!r}", hint="use 'mine' or 'union'")
        cf = self.conflict
        tag = f"version {cf['current']} by {cf['author']}"
        if how == "union":
            theirs = version_mask(ds, store, self.case_id, int(cf["current"]))
            merged, _ = union_masks(theirs, self.stack.current)
            self.stack.push(merged)
            extra = f"union with {tag}"
        else:
            extra = f"replaces {tag}"
        return self.save(store, author, f"{note} ({extra})" if note else extra, on_top=True)
