"""A name -> value mapping whose lookups fail with the list of valid names."""

from __future__ import annotations

from typing import Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A params value, argument or input that normbench cannot use; the message says the fix."""


class Registry(Generic[T]):
    """One registry per concept (norm, model, dataset, ...): ``kind`` names it in error messages."""

    def __init__(self, kind: str, entries: Mapping[str, T]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def check(self, name: object) -> str:
        """Return ``name`` if registered, else raise a ConfigError naming the valid choices."""
        if not isinstance(name, str):
            raise ConfigError(
                f"{self.kind} must be a string, got {type(name).__name__} {name!r}; "
                f"valid choices: {', '.join(self._entries)}"
            )
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self._entries)}"
            )
        return name
