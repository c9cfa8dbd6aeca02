"""Import of a legacy per-dataset ``review.sqlite`` into a shared review store.

Earlier versions kept one SQLite file per dataset, in the dataset's workspace folder (schema 1-3,
dataset key ``''``). :meth:`LegacyMixin.import_legacy` copies its events and mask versions under
the dataset's key, once (recorded in ``meta`` as ``imported:<dataset>``), in one transaction, and
copies its mask PNGs into the store's masks folder; the old file is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import StoreError
from engine.store import db as _db
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.location import MASKS_DIR
from engine.store.masks import MASK_FILE_MODE, ensure_masks_dir, mask_path
from engine.store.projection import rebuild_current
from engine.store.records import _now


class LegacyMixin(StoreBase):
    """The legacy import of :class:`engine.store.ReviewStore`."""

    def import_legacy(self, legacy: str | Path) -> int:
        """Import a per-dataset ``review.sqlite`` (schema 1-3, key ``''``) into this dataset; returns events
        imported (0 if it was imported before). Mask PNGs are copied into :attr:`masks_dir`; the old file
        is only read. Runs in one transaction: a crash imports nothing."""
        legacy = Path(legacy).resolve()
        _db.check_sqlite_file(legacy)
        key = f"imported:{self.dataset_key}"
        if self.tx.read(lambda c: c.execute(sa.select(T.meta.c.value).where(T.meta.c.key == key)).scalar()):
            return 0
        try:
            src = sqlite3.connect(f"file:{legacy}?mode=ro", uri=True)
            try:
                cols = {r[1] for r in src.execute("PRAGMA table_info(events)")}
                where = " WHERE dataset = ''" if "dataset" in cols else ""
                events = src.execute("SELECT id, ts, author, kind, target_kind, target, value, note, ref, payload "
                                     f"FROM events{where} ORDER BY id").fetchall()
                has_mv = src.execute("SELECT 1 FROM sqlite_master WHERE name='mask_versions'").fetchone()
                mvs = src.execute("SELECT case_id, version, sha256, file, height, width, area, author, note, created, "
                                  f"base_version, reverted_from, event_id FROM mask_versions{where} "
                                  "ORDER BY case_id, version").fetchall() if has_mv else []
            finally:
                src.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the old review store ({exc})", path=legacy,
                             hint="move the damaged file away; its decisions cannot be imported") from None
        ensure_masks_dir(self.masks_dir)
        for r in mvs:
            if r[3]:
                f = Path(r[3])
                srcf = f if f.is_absolute() else legacy.parent / f
                dst = mask_path(self.masks_dir, r[2])
                if srcf.is_file() and not dst.exists():
                    tmp = dst.with_name(dst.name + ".importing")
                    shutil.copyfile(srcf, tmp)
                    os.chmod(tmp, MASK_FILE_MODE)
                    os.replace(tmp, dst)

        def run(conn: Connection) -> int:
            if conn.execute(sa.select(T.meta.c.value).where(T.meta.c.key == key)).scalar():
                return 0
            ids: dict[int, int] = {}
            for r in events:
                res = conn.execute(T.events.insert().values(
                    ts=r[1], author=r[2], kind=r[3], target_kind=r[4], target=str(ids.get(int(r[5]), r[5]))
                    if r[3] == "undo" and str(r[5]).isdigit() else r[5], value=r[6], note=r[7] or "",
                    ref=None if r[8] is None else ids.get(int(r[8])), payload=r[9], dataset=self.dataset_key))
                ids[int(r[0])] = _db.inserted_id(res)
            for r in mvs:
                conn.execute(T.mask_versions.insert().values(
                    dataset=self.dataset_key, case_id=r[0], version=r[1], sha256=r[2],
                    file=None if r[3] is None else f"{MASKS_DIR}/{Path(r[3]).name}", height=r[4], width=r[5],
                    area=r[6], author=r[7], note=r[8] or "", created=r[9], base_version=r[10],
                    reverted_from=r[11], event_id=ids.get(int(r[12]), 0)))
            rebuild_current(conn, self.dataset_key)
            conn.execute(T.meta.insert().values(key=key, value=json.dumps({"from": str(legacy), "at": _now(),
                                                                           "events": len(events)})))
            return len(events)

        return self.tx.write(run)
