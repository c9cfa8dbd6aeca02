"""Times on screen in the reader's zone: the store keeps UTC ISO strings, the pages show
``YYYY-MM-DD HH:MM`` in the browser's time zone (``st.context.timezone``, else its offset), else the
server's local zone (AppTest, scripts, a browser that sent none).

Example:
    >>> from ui.timefmt import local_time
    >>> local_time("2026-12-07T20:04:05+00:00")           # doctest: +SKIP
    '2026-12-07 21:04'
"""

from __future__ import annotations

import datetime as _dt

import streamlit as st

FORMAT = "%Y-%m-%d %H:%M"


def reader_zone() -> _dt.tzinfo | None:
    """The browser's time zone (IANA name, else its UTC offset); None = the server's local zone."""
    try:
        name = st.context.timezone
        offset = st.context.timezone_offset
    except Exception:  # noqa: BLE001 - no request context (AppTest, a script)
        return None
    if name:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    if isinstance(offset, (int, float)) and not isinstance(offset, bool):
        return _dt.timezone(-_dt.timedelta(minutes=offset))  # JS getTimezoneOffset: UTC minus local
    return None


def to_local(ts: str | float | _dt.datetime, tz: _dt.tzinfo | None = None) -> _dt.datetime:
    """A stored time (ISO string, POSIX seconds or datetime; naive = UTC) in ``tz`` (None: server-local)."""
    if isinstance(ts, _dt.datetime):
        t = ts
    elif isinstance(ts, (int, float)):
        t = _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc)
    else:
        t = _dt.datetime.fromisoformat(str(ts).strip().replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(tz)


def local_time(ts: str | float | _dt.datetime | None, fmt: str = FORMAT) -> str:
    """A stored time as ``YYYY-MM-DD HH:MM`` in the reader's zone (:func:`reader_zone`); "" for none,
    the text unchanged when it is not a time."""
    if ts is None or ts == "":
        return ""
    try:
        return to_local(ts, reader_zone()).strftime(fmt)
    except (ValueError, TypeError, OverflowError, OSError):
        return str(ts)
