"""A name -> function registry whose failed lookup lists the valid names (and the nearest one)."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from distill.errors import DistillError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            near = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise DistillError(f"Unknown {self.kind} {name!r}.{hint} Valid: {', '.join(self.names())}.")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
