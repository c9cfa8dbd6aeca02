"""Mask versions of the review store: corrected masks saved as numbered versions per case.

Version 0 is the dataset's original mask (never stored); every save or revert appends the next
version (``mask_versions`` is append-only) with a ``mask_saved`` event in the same transaction.
A save names the version it started from (``base_version``): if another was saved meanwhile,
nothing is written (:class:`engine.errors.ConflictError`). Pixels live in content-addressed
lossless PNGs (``<masks_dir>/<sha256>.png``), written atomically BEFORE the row, so a crash
leaves an orphan file only. Like uploads (:mod:`engine.phi`) they are patient data: files 0600, and a
masks folder the store creates 0700 (a folder that already exists keeps its permissions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import ConflictError, StoreError
from engine.store import projection as P
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.location import MASKS_DIR
from engine.store.records import MaskVersion, _check_mask, _now, mask_digest

if TYPE_CHECKING:
    from engine.store.records import StoredRow


MASK_FILE_MODE = 0o600
MASKS_DIR_MODE = 0o700


def ensure_masks_dir(masks_dir: Path) -> Path:
    """Create ``masks_dir`` (0700) when missing; an existing folder keeps its permissions."""
    if not masks_dir.is_dir():
        masks_dir.mkdir(parents=True, exist_ok=True, mode=MASKS_DIR_MODE)
        os.chmod(masks_dir, MASKS_DIR_MODE)
    return masks_dir


def mask_path(masks_dir: Path, sha: str) -> Path:
    """The content-addressed PNG of a mask in a masks folder."""
    return masks_dir / f"{sha}.png"


class MasksMixin(StoreBase):
    """Mask versions and their PNG files of :class:`engine.store.ReviewStore`."""

    def _mask_path(self, sha: str) -> Path:
        return mask_path(self.masks_dir, sha)

    def write_mask_file(self, mask: np.ndarray) -> tuple[str, Path]:
        """Write a mask as a content-addressed lossless PNG (atomic, idempotent, 0600): ``(sha256, path)``."""
        from engine.io import write_mask_png

        m = _check_mask(mask)
        sha = mask_digest(m)
        path = self._mask_path(sha)
        if not path.exists():
            ensure_masks_dir(self.masks_dir)
            write_mask_png(path, m, mode=MASK_FILE_MODE)
        return sha, path

    def _latest_in(self, conn: Connection, case_id: str) -> int:
        mv = T.mask_versions
        got = conn.execute(sa.select(sa.func.max(mv.c.version)).where(
            mv.c.dataset == self.dataset_key, mv.c.case_id == case_id)).scalar()
        return int(got) if got is not None else 0

    def _insert_version(self, conn: Connection, **values: object) -> None:
        conn.execute(T.mask_versions.insert().values(dataset=self.dataset_key, created=_now(), **values))

    def save_mask_version(self, case_id: str, mask: np.ndarray, author: str, note: str = "",
                          base_version: int | None = None, *, mark_corrected: bool = True) -> int:
        """Save a corrected mask as the case's next version; returns the new version number.

        Args:
            case_id: the case.
            mask: uint8/bool/int (H,W) label map.
            author: who drew it (annotator or higher). note: why.
            base_version: the version the edit started from (None or 0 = the dataset's original).
            mark_corrected: also set the case's review state to ``corrected`` (same transaction).

        Raises:
            ConflictError: ``base_version`` is not the newest version (someone saved in
                between); ``err.current_version`` is the newest.
            PermissionDenied: ``author`` may not save masks.
        """
        m = _check_mask(mask)
        sha, path = self.write_mask_file(m)  # before the transaction: a crash leaves an orphan file only
        base = int(base_version or 0)
        case_id = str(case_id)
        area = int(np.count_nonzero(m))

        def run(conn: Connection) -> int:
            who = self._acting(conn, author, "annotator")
            latest = self._latest_in(conn, case_id)
            if base != latest:
                raise ConflictError(f"case {case_id}: your edit started from version {base} but version {latest} "
                                    f"was saved meanwhile", current_version=latest, path=self.path,
                                    hint=f"reload version {latest}, redo or merge your change, and save again")
            version = latest + 1
            eid = self._insert_event(conn, who, "mask_saved", "case", case_id, str(version), note,
                                     payload={"version": version, "sha256": sha, "base_version": base})
            self._insert_version(conn, case_id=case_id, version=version, sha256=sha, file=f"{MASKS_DIR}/{path.name}",
                                 height=int(m.shape[0]), width=int(m.shape[1]), area=area, author=who,
                                 note=note or "", base_version=base, reverted_from=None, event_id=eid)
            if mark_corrected:
                sid = self._insert_event(conn, who, "case_state", "case", case_id, "corrected",
                                         f"mask version {version} saved")
                P.set_current(conn, self.dataset_key, "case_state", "case", case_id, sid)
            return version

        return self.tx.write(run)

    @staticmethod
    def _row_version(r: StoredRow) -> MaskVersion:
        return MaskVersion(r.case_id, int(r.version), r.sha256, r.file, r.height, r.width, r.area, r.author,
                           r.note or "", r.created, r.base_version, r.reverted_from, int(r.event_id))

    def _versions(self, *where: sa.ColumnElement[bool]) -> list[MaskVersion]:
        mv = T.mask_versions
        q = sa.select(mv).where(mv.c.dataset == self.dataset_key, *where).order_by(mv.c.case_id, mv.c.version)
        return [self._row_version(r) for r in self.tx.read(lambda c: c.execute(q).all())]

    def mask_history(self, case_id: str) -> list[MaskVersion]:
        """Saved versions of a case, oldest first (empty: only the original, version 0)."""
        return self._versions(T.mask_versions.c.case_id == str(case_id))

    def latest_mask_version(self, case_id: str) -> int:
        """Newest version number of a case (0 = the original, never edited)."""
        return self.tx.read(lambda c: self._latest_in(c, str(case_id)))

    def mask_version(self, case_id: str, version: int) -> MaskVersion | None:
        mv = T.mask_versions
        got = self._versions(mv.c.case_id == str(case_id), mv.c.version == int(version))
        return got[0] if got else None

    def mask_file(self, mv: MaskVersion) -> Path | None:
        """Absolute path of a version's PNG (None for the original)."""
        if mv.file is None:
            return None
        p = Path(mv.file)
        return p if p.is_absolute() else self.masks_dir / p.name

    def load_mask_version(self, case_id: str, version: int) -> np.ndarray:
        """A version's mask, uint8 (H,W). Version 0 (or a revert to it) needs ``dataset``.

        Raises:
            StoreError: no such version, the PNG is missing or does not match its hash, or
                version 0 was asked for without a dataset.
        """
        from engine.io import read_mask

        case_id = str(case_id)
        mv = None if int(version) == 0 else self.mask_version(case_id, version)
        if int(version) != 0 and mv is None:
            latest = self.latest_mask_version(case_id)
            raise StoreError(f"case {case_id} has no mask version {version} (newest is {latest})", path=self.path,
                             hint="pick a version from mask_history()")
        if mv is None or mv.is_original:
            if self.dataset is None:
                raise StoreError(f"version 0 of case {case_id} is the dataset's original mask", path=self.path,
                                 hint="open the store with dataset=... (ReviewStore.for_dataset) or use "
                                      "Dataset.load_mask")
            return self.dataset.load_mask(case_id)
        path = self.mask_file(mv)
        assert path is not None
        try:
            m, _ = read_mask(path)
        except Exception as exc:  # noqa: BLE001 - report as a store problem
            raise StoreError(f"mask version {version} of case {case_id} cannot be read ({exc})", path=path,
                             hint="the masks folder of the store is incomplete; restore it from a backup") from None
        if mask_digest(m) != mv.sha256:
            raise StoreError(f"mask version {version} of case {case_id} does not match its recorded hash", path=path,
                             hint="the PNG was modified outside the workbench; restore it from a backup")
        return m

    def revert(self, case_id: str, version: int, author: str, note: str = "",
               base_version: int | None = None) -> int:
        """Add a new version that copies ``version`` (0 = the dataset's original); returns it.

        ``base_version`` (optional) is checked like in :meth:`save_mask_version`.
        """
        case_id = str(case_id)
        version = int(version)

        def run(conn: Connection) -> int:
            who = self._acting(conn, author, "annotator")
            latest = self._latest_in(conn, case_id)
            if base_version is not None and int(base_version) != latest:
                raise ConflictError(f"case {case_id}: version {latest} was saved after version {base_version}",
                                    current_version=latest, path=self.path,
                                    hint=f"reload version {latest} before reverting")
            if version == 0:
                sha, file, h, w, area = None, None, None, None, None
            else:
                mv = T.mask_versions
                row = conn.execute(sa.select(mv.c.sha256, mv.c.file, mv.c.height, mv.c.width, mv.c.area).where(
                    mv.c.dataset == self.dataset_key, mv.c.case_id == case_id, mv.c.version == version)).first()
                if row is None:
                    raise StoreError(f"case {case_id} has no mask version {version} (newest is {latest})",
                                     path=self.path, hint="pick a version from mask_history()")
                sha, file, h, w, area = row
            new = latest + 1
            eid = self._insert_event(conn, who, "mask_saved", "case", case_id, str(new), note or f"revert to {version}",
                                     payload={"version": new, "sha256": sha, "base_version": latest,
                                              "reverted_from": version})
            self._insert_version(conn, case_id=case_id, version=new, sha256=sha, file=file, height=h, width=w,
                                 area=area, author=who, note=note or f"revert to version {version}",
                                 base_version=latest, reverted_from=version, event_id=eid)
            return new

        return self.tx.write(run)

    def corrected_masks(self) -> dict[str, MaskVersion]:
        """Cases whose newest version is a corrected mask (not a revert to the original)."""
        mv = T.mask_versions
        newest = sa.select(mv.c.case_id, sa.func.max(mv.c.version).label("v")).where(
            mv.c.dataset == self.dataset_key).group_by(mv.c.case_id).subquery()
        q = sa.select(mv).join(newest, sa.and_(mv.c.case_id == newest.c.case_id, mv.c.version == newest.c.v)).where(
            mv.c.dataset == self.dataset_key)
        rows = self.tx.read(lambda c: c.execute(q).all())
        return {r.case_id: self._row_version(r) for r in rows if r.sha256 is not None}
