"""Progress reporting without printing.

Long-running engine functions take ``progress: ProgressFn | None``. It is called as
``progress(done, total, message)``; ``total`` may be 0 when unknown. The CLI turns it
into a tqdm bar (:func:`engine.cli.common.tqdm_progress`), pages into ``st.progress``.

Example:
    >>> seen = []
    >>> report = as_progress(lambda d, t, m: seen.append((d, t)))
    >>> report(1, 2, "reading")
    >>> seen
    [(1, 2)]
"""

from __future__ import annotations

from typing import Callable, Protocol


class ProgressFn(Protocol):
    """Callback ``(done, total, message) -> None``."""

    def __call__(self, done: int, total: int, message: str = "") -> None: ...


def _noop(done: int, total: int, message: str = "") -> None:
    return None


def as_progress(fn: Callable[..., None] | None) -> ProgressFn:
    """Return ``fn`` or a no-op callback when ``fn`` is None."""
    return fn if fn is not None else _noop


def scaled(fn: ProgressFn | None, start: float, stop: float, total: int = 1000) -> ProgressFn:
    """Map a sub-task's progress into the ``[start, stop]`` fraction of a parent bar.

    Args:
        fn: the parent callback (may be None).
        start, stop: fractions in [0, 1] of the parent's range this sub-task covers.
        total: resolution of the parent bar.
    """
    parent = as_progress(fn)
    parent_total = total

    # The parameter is named ``total`` like ProgressFn's, so keyword calls match the protocol.
    def report(done: int, total: int, message: str = "") -> None:
        frac = done / total if total else 0.0
        parent(int(round((start + (stop - start) * frac) * parent_total)), parent_total, message)

    return report
