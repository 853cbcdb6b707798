"""One generic registry: named factories that can be listed with shell-style patterns."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Generic, TypeVar

from .errors import PolymodalError

T = TypeVar("T")


class UnknownNameError(PolymodalError, KeyError):
    """Raised for a name the registry does not hold; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None, overwrite: bool = False):
        """Register `item` under `name`; without `item`, works as a decorator. A name already taken
        is an error unless `overwrite` says replacing it is meant (two plugins must not shadow
        each other unnoticed)."""
        if item is not None:
            return self._put(name, item, overwrite)
        return lambda obj: self._put(name, obj, overwrite)

    def _put(self, name: str, item: T, overwrite: bool) -> T:
        if name in self._items and not overwrite:
            raise ValueError(f"{self.kind} '{name}' is already registered; pass overwrite=True to replace it")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'. Known: {', '.join(sorted(self._items))}.{hint}"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
