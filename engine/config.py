"""Typed, frozen configuration dataclasses that round-trip through JSON.

Subclass :class:`JsonConfig` with ``@dataclass(frozen=True)``. ``from_dict`` rejects
unknown keys (listing the valid ones) and rebuilds nested configs and tuples, so
``Cfg.from_dict(cfg.to_dict()) == cfg`` holds.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt(JsonConfig):
    ...     lr: float = 1e-3
    ...     sizes: tuple[int, ...] = (1, 2)
    >>> Opt.from_json(Opt(lr=0.1).to_json()) == Opt(lr=0.1)
    True
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import ConfigError

T = TypeVar("T", bound="JsonConfig")


class JsonConfig:
    """Mixin for frozen dataclasses: ``to_dict``/``from_dict``/``to_json``/``from_json``/``replace``."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (tuples become lists, nested configs become dicts)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        """Build from a dict; unknown keys raise :class:`ConfigError` naming the valid keys."""
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no option(s) {', '.join(unknown)}",
                              hint=f"valid options: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _from_plain(hints.get(k, Any), v, f"{cls.__name__}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {cls.__name__}: {exc}") from None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({exc})") from None

    def save(self, path: str | Path) -> None:
        from engine.fsutil import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        from engine.fsutil import read_json

        try:
            return cls.from_dict(read_json(path))
        except ConfigError as exc:
            raise ConfigError(exc.message, path=path, hint=exc.hint) from None

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _to_plain(value: Any) -> Any:
    if isinstance(value, JsonConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _from_plain(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _from_plain(non_none[0], value, where)
        return value
    if isinstance(tp, type) and issubclass(tp, JsonConfig):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {type(value).__name__}")
        return tp.from_dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v, where) for v in value)
        if args:
            return tuple(_from_plain(a, v, where) for a, v in zip(args, value))
        return tuple(value)
    if origin is dict and isinstance(value, dict):
        kt, vt = args if args else (Any, Any)
        return {(_from_plain(kt, k, where) if kt is not str else k): _from_plain(vt, v, where)
                for k, v in value.items()}
    if tp is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value
