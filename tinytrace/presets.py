"""Named presets and strict dict round-trips, shared by every config dataclass.

A base utility: it imports nothing from the package, so every layer (``lang`` included) may use it.
"""
from __future__ import annotations

import dataclasses
from typing import Generic, TypeVar

C = TypeVar("C")


def check_fields(cls, keys) -> None:
    """Raise ``ValueError`` naming every key that is not a field of dataclass ``cls``."""
    unknown = sorted(set(keys) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")


class ConfigDict:
    """Mixin for config dataclasses: JSON-ready ``to_dict`` (tuples as lists) and a strict
    ``from_dict`` (an unknown key is an error, never silently dropped: a run record written by
    other code must not be read as this code's config)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        check_fields(cls, d)
        return cls(**d)


class Presets(dict, Generic[C]):
    """``name -> config``; ``presets[name]`` and :meth:`get` raise ``ValueError`` listing the
    names when ``name`` is unknown; :meth:`get` also replaces fields (unknown fields raise)."""

    def __init__(self, kind: str, presets: dict[str, C]):
        super().__init__(presets)
        self.kind = kind

    def __missing__(self, name):
        raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self)}")

    def get(self, name: str, **overrides) -> C:  # type: ignore[override]
        cfg = self[name]
        check_fields(type(cfg), overrides)
        return dataclasses.replace(cfg, **overrides)
