"""A small name → factory registry shared by backbones, methods, datasets and evals.

Registries are the only module-level mutable state in the project. They are
filled at import time, append-only, and raise on a duplicate name so that two
plugins can never silently shadow each other (timm only warns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plugin: its factory and, optionally, its config dataclass."""

    name: str
    factory: T
    config_cls: type | None = None


class Registry(Generic[T]):
    """Maps snake_case names to factories (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type | None = None) -> Callable[[T], T]:
        """Decorator registering ``factory`` under ``name``; a duplicate name raises."""

        def wrap(factory: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, factory, config_cls)
            return factory

        return wrap

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``; an unknown name lists the available ones."""
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} '{name}'; available: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered under ``name``."""
        return self.get(name).factory(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
