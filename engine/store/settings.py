"""Admin settings of the review store: the data roots (folders team mode may open datasets under)
and the export roots (folders it may write exports and manifests to).

Settings are JSON values keyed by name; only an admin (or the local command line) changes them,
and every change is written to the admin log in the same transaction.

A root that opens far too much (:func:`broad_folder`: a filesystem root such as ``/``, the home
folder, or the folder of all home folders) is refused unless the caller confirms it
(``confirm_broad=True``; CLI ``--allow-root``, a checkbox on the Admin page).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import ConfigError
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.records import Actor, _now
from engine.store.users import log_admin


def broad_folder(path: str | Path) -> str:
    """Why ``path`` (resolved) is too broad to be a data or export root ('' when it is not): a
    filesystem root, the home folder of the user running the server, or the folder holding home folders."""
    p = Path(str(path)).expanduser().resolve()
    if p.parent == p:
        return "a filesystem root"
    home = Path.home().resolve()
    if p == home:
        return "the home folder of the account running the server"
    if p == home.parent:
        return "the folder of all home folders"
    return ""


class SettingsMixin(StoreBase):
    """Data roots and export roots of :class:`engine.store.ReviewStore`."""

    def _get_setting(self, key: str, default: object) -> object:
        s = T.settings
        got = self.tx.read(lambda c: c.execute(sa.select(s.c.value).where(s.c.key == key)).scalar())
        return default if got is None else json.loads(got)

    def _set_setting(self, key: str, value: object, actor: Actor) -> None:
        def run(conn: Connection) -> None:
            who = self._acting(conn, actor, "admin")
            s = T.settings
            conn.execute(s.delete().where(s.c.key == key))
            conn.execute(s.insert().values(key=key, value=json.dumps(value), updated=_now(), author=who))
            log_admin(conn, who, "setting", key, value)

        self.tx.write(run)

    def _folder_list(self, key: str) -> list[Path]:
        return [Path(p) for p in cast(list[str], self._get_setting(key, []))]

    @staticmethod
    def _folders(folders: Iterable[str | Path], what: str, confirm_broad: bool = False) -> list[str]:
        out: list[str] = []
        for f in folders:
            p = Path(str(f)).expanduser()
            if not p.is_absolute():
                raise ConfigError(f"{what} must be an absolute folder path, got {str(f)!r}",
                                  hint="give the full path, e.g. /data/ultrasound")
            if not p.is_dir():
                raise ConfigError(f"{what} is not an existing folder", path=p, hint="create it or fix the path")
            why = broad_folder(p)
            if why and not confirm_broad:
                raise ConfigError(f"this is {why}: as {what} it would let team mode reach every file below it "
                                  "(system files, keys, other projects' patient data)", path=p.resolve(),
                                  hint="give the folder that holds the data, e.g. /data/ultrasound; if you really "
                                       "mean it, confirm (CLI: --allow-root; Admin page: the 'allow' checkbox)")
            r = str(p.resolve())
            if r not in out:
                out.append(r)
        return out

    def data_roots(self) -> list[Path]:
        """Folders under which team mode may open datasets (empty: none configured)."""
        return self._folder_list("data_roots")

    def set_data_roots(self, folders: Iterable[str | Path], *, actor: Actor, confirm_broad: bool = False) -> list[Path]:
        """Replace the data roots (admin only; existing absolute folders; a filesystem root or the home
        folder only with ``confirm_broad=True``)."""
        roots = self._folders(folders, "a data root", confirm_broad)
        self._set_setting("data_roots", roots, actor)
        return [Path(p) for p in roots]

    def export_roots(self) -> list[Path]:
        """Folders where team mode may write exports and manifests (besides the workspace)."""
        return self._folder_list("export_roots")

    def export_root(self) -> Path | None:
        """The first export root (the default target of exports), or None."""
        roots = self.export_roots()
        return roots[0] if roots else None

    def set_export_roots(self, folders: Iterable[str | Path], *, actor: Actor,
                         confirm_broad: bool = False) -> list[Path]:
        """Replace the export roots (admin only; existing absolute folders; a filesystem root or the home
        folder only with ``confirm_broad=True``)."""
        roots = self._folders(folders, "an export root", confirm_broad)
        self._set_setting("export_roots", roots, actor)
        return [Path(p) for p in roots]

    @staticmethod
    def path_under(path: str | Path, roots: Iterable[str | Path]) -> bool:
        """True when ``path`` (resolved, symlinks followed) lies inside one of ``roots``."""
        p = Path(path).expanduser().resolve()
        return any(p == Path(r).resolve() or Path(r).resolve() in p.parents for r in roots)
