"""Query parameters, with the interface of Robyn's ``QueryParams``."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from urllib.parse import parse_qsl

__all__ = ["QueryParams"]


class QueryParams:
    """The query string of a request, as a multi-valued mapping.

    Decoded as ``urllib.parse.parse_qsl(query, keep_blank_values=True)`` does
    (``?a=&b`` has ``a`` and ``b``, both ``""``; ``+`` and ``%20`` are spaces).

    Args:
        query: the raw query string, without the ``?``.
    """

    def __init__(self, query: str = "") -> None:
        self._params: dict[str, list[str]] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            self._params.setdefault(key, []).append(value)

    def get(self, key: str, default: str | None = None) -> str | None:
        """Return the last value of ``key``, or ``default`` when it is missing."""
        values = self._params.get(key)
        return values[-1] if values else default

    def get_first(self, key: str) -> str | None:
        """Return the first value of ``key``, or ``None`` when it is missing."""
        values = self._params.get(key)
        return values[0] if values else None

    def get_all(self, key: str) -> list[str] | None:
        """Return every value of ``key`` in order, or ``None`` when it is missing."""
        values = self._params.get(key)
        return list(values) if values else None

    def contains(self, key: str) -> bool:
        """Tell whether ``key`` appears in the query string."""
        return key in self._params

    def empty(self) -> bool:
        """Tell whether the query string has no parameters."""
        return not self._params

    def to_dict(self) -> dict[str, list[str]]:
        """Return ``{key: [values]}`` (a copy)."""
        return {key: list(values) for key, values in self._params.items()}

    def keys(self) -> KeysView[str]:
        """The parameter names."""
        return self._params.keys()

    def values(self) -> ValuesView[list[str]]:
        """The lists of values, one per name."""
        return self._params.values()

    def items(self) -> ItemsView[str, list[str]]:
        """``(name, [values])`` pairs."""
        return self._params.items()

    def __contains__(self, key: object) -> bool:
        return key in self._params

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"QueryParams({self._params!r})"
