"""Project error types. Every user-facing failure raises a :class:`WorkbenchError`.

A message names the file (when there is one), says what is wrong, and says what
to do. ``str(err)`` renders all three, so pages and the CLI can show it as-is.

Example:
    >>> from engine.errors import ReadError
    >>> e = ReadError("TIFF is truncated", path="a.tif", hint="re-export the file")
    >>> str(e)
    'a.tif: TIFF is truncated. Fix: re-export the file'
"""

from __future__ import annotations

from pathlib import Path


class WorkbenchError(Exception):
    """Base class for errors meant for the user (bad input, bad configuration).

    Args:
        message: what is wrong, one sentence, no trailing period needed.
        path: the file or folder concerned, if any.
        hint: what the user should do about it.

    ``exit_code`` is the CLI's exit status for this error type (2 unless a subclass says otherwise).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.message = message.rstrip(". ")
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:  # noqa: D105
        text = f"{self.path}: {self.message}" if self.path else self.message
        text += "."
        if self.hint:
            text += f" Fix: {self.hint}"
        return text


class ReadError(WorkbenchError):
    """An image, mask or metadata file could not be read or decoded."""


class MissingPluginError(ReadError):
    """A compressed format needs an optional decoder package that is not installed."""


class LayoutError(WorkbenchError):
    """A folder does not match any known dataset layout, or a layout is inconsistent."""


class MaskError(WorkbenchError):
    """A mask is malformed or does not match its image (size, values, classes)."""


class RLEError(WorkbenchError):
    """A run-length encoding is malformed (odd count, negative/overlapping runs, out of bounds)."""


class CSVFormatError(WorkbenchError):
    """A CSV file has the wrong header, columns or encoding."""


class ConfigError(WorkbenchError):
    """A configuration value or name is invalid (unknown registry name, bad JSON)."""


class CheckpointError(WorkbenchError):
    """A weights folder is missing, corrupt, or does not match its model card."""


class StoreError(WorkbenchError):
    """The review store is unreadable, from a newer schema, or a write conflicted."""


class ConflictError(StoreError):
    """A save was based on a version that is no longer the newest (someone saved in between)."""

    def __init__(self, message: str, *, current_version: int | None = None, **kw):
        self.current_version = current_version
        super().__init__(message, **kw)


class StaleDecision(ConflictError):
    """A review decision (or undo) was based on an event that is no longer the target's current one.

    Nothing was written. Attributes name what the writer had not seen: ``target_kind``, ``members``
    (case ids, sorted), ``current_event`` (event id), ``decision`` (canonical, relative to the sorted
    ids), ``decision_as_given`` (relative to the a/b of whoever decided), ``decided_by``, ``decided_at``
    (UTC ISO-8601) and ``base_event`` (what the refused write was based on).
    """

    exit_code = 3

    def __init__(self, message: str, *, target_kind: str = "pair", members: tuple[str, ...] = (),
                 current_event: int | None = None, decision: str | None = None,
                 decision_as_given: str | None = None, decided_by: str | None = None,
                 decided_at: str | None = None, base_event: int | None = None, **kw):
        self.target_kind = target_kind
        self.members = tuple(members)
        self.current_event = current_event
        self.decision = decision
        self.decision_as_given = decision_as_given
        self.decided_by = decided_by
        self.decided_at = decided_at
        self.base_event = base_event
        super().__init__(message, **kw)


class ClaimHeld(StoreError):
    """A case is claimed (being edited) by someone else whose lease has not expired."""

    exit_code = 3

    def __init__(self, message: str, *, case_id: str = "", holder: str = "", expires: float = 0.0, **kw):
        self.case_id = case_id
        self.holder = holder
        self.expires = expires
        super().__init__(message, **kw)


class PermissionDenied(StoreError):
    """The acting user is unknown, disabled, not signed in, or their role does not allow the action."""

    exit_code = 4


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """Build the standard error for a registry lookup miss, listing the valid names.

    Example:
        >>> raise unknown_name("loss", "dcie", ["dice", "bce"])  # doctest: +SKIP
    """
    choices = ", ".join(sorted(valid))
    return ConfigError(f"unknown {kind} '{name}'", hint=f"use one of: {choices}")
