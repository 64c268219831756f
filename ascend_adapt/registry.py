"""One small registry per extension point.

Registering a name twice raises unless `override=True`; an unknown name raises with the list of
known names. Registries hold plain objects (classes, functions, dataclasses); what they mean is up
to the extension point (model adapters, operators, rewrite rules, targets, runners, CLI commands).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object map that refuses silent overwrites.

    Args:
        kind: what the entries are ("model adapter", "operator", …), used in messages.
        loader: optional callable run once before the first lookup, to import the modules that
            register the built-in entries (keeps imports lazy).
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the loader registers through us
            assert self._loader is not None
            self._loader()

    def register(self, name: str, obj: T | None = None, *, override: bool = False):
        """Register `obj` under `name`; usable as a decorator when `obj` is omitted."""

        def _add(o: T) -> T:
            if name in self._items and not override and self._items[name] is not o:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered ({self._items[name]!r})",
                    "pick another name, or pass override=True to replace it on purpose",
                )
            self._items[name] = o
            return o

        if obj is None:
            return _add
        return _add(obj)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(
                f"unknown {self.kind} '{name}'", f"use one of: {known}"
            ) from None

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._ensure_loaded()
        return iter(sorted(self._items.items()))

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._items)
