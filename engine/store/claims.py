"""Case claims of the review store: a lease saying who is editing a case now.

A claim lasts ``ttl`` seconds and is renewed by its holder; an expired lease is free for anyone.
Claims are mutable rows (not part of the audit log): they coordinate editors, they record nothing.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.errors import ClaimHeld, ConfigError
from engine.store import tables as T
from engine.store.base import StoreBase
from engine.store.records import DEFAULT_CLAIM_TTL, Claim

if TYPE_CHECKING:
    from engine.store.records import StoredRow


class ClaimsMixin(StoreBase):
    """Case claims (leases) of :class:`engine.store.ReviewStore`."""

    def claim(self, case_id: str, user: str, ttl: float = DEFAULT_CLAIM_TTL) -> Claim:
        """Claim a case for editing for ``ttl`` seconds (renews your own claim).

        Raises:
            ClaimHeld: someone else holds an unexpired claim (``err.holder``, ``err.expires``).
            PermissionDenied: ``user`` may not edit (needs annotator or higher).
        """
        case_id, ttl = str(case_id), float(ttl)
        if ttl <= 0:
            raise ConfigError(f"claim lease must be positive, got {ttl}", hint="pass seconds, e.g. 300")

        def run(conn: Connection) -> Claim:
            who = self._acting(conn, user, "annotator")
            cl = T.claims
            row = conn.execute(sa.select(cl).where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id)).first()
            now = time.time()
            if row is not None and row.user_name != who and row.expires > now:
                raise self._held(case_id, row)
            claimed = row.claimed if row is not None and row.user_name == who and row.expires > now else now
            conn.execute(cl.delete().where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id))
            conn.execute(cl.insert().values(dataset=self.dataset_key, case_id=case_id, user_name=who, claimed=claimed,
                                            expires=now + ttl))
            return Claim(case_id, who, claimed, now + ttl)

        return self.tx.write(run)

    def _held(self, case_id: str, row: StoredRow) -> ClaimHeld:
        left = max(0, int(row.expires - time.time()))
        return ClaimHeld(f"case {case_id} is being edited by {row.user_name} (claimed "
                         f"{_dt.datetime.fromtimestamp(row.claimed, _dt.timezone.utc).strftime('%H:%M:%S')} UTC, "
                         f"lease ends in {left} s)", case_id=case_id, holder=row.user_name, expires=row.expires,
                         path=self.path, hint="wait for them to finish or ask them to release it")

    def release(self, case_id: str, user: str, *, force: bool = False) -> bool:
        """Release your claim on a case (an admin may ``force`` someone else's); True if one was removed."""
        case_id = str(case_id)

        def run(conn: Connection) -> bool:
            who = self._acting(conn, user, "admin" if force else "viewer")
            cl = T.claims
            row = conn.execute(sa.select(cl).where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id)).first()
            if row is None:
                return False
            if row.user_name != who and not force:
                if row.expires > time.time():
                    raise self._held(case_id, row)
                return False
            conn.execute(cl.delete().where(cl.c.dataset == self.dataset_key, cl.c.case_id == case_id))
            return True

        return self.tx.write(run)

    def claims(self, *, include_expired: bool = False) -> dict[str, Claim]:
        """Current claims of this dataset ``{case_id: Claim}`` (expired leases are free and omitted)."""
        cl = T.claims
        rows = self.tx.read(lambda c: c.execute(sa.select(cl).where(cl.c.dataset == self.dataset_key)).all())
        now = time.time()
        return {r.case_id: Claim(r.case_id, r.user_name, float(r.claimed), float(r.expires))
                for r in rows if include_expired or r.expires > now}

    def claim_for(self, case_id: str) -> Claim | None:
        """The unexpired claim on a case, or None."""
        return self.claims().get(str(case_id))
