"""Name -> object registries with metadata and user-facing errors.

timm's `register_model` + pretrained-cfg pattern: `@registry.register("name", description=...,
**metadata)` stores the object together with a frozen `Info` record, so callers read what an
entry needs (`registry.info(name)`) instead of branching on its name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name_message(kind: str, name: str, choices) -> str:
    choices = sorted(choices)
    return (
        f"Unknown {kind} {name!r}.{suggest(name, choices)} "
        f"Valid {kind}s: {', '.join(choices)}."
    )


class UnknownNameError(KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Info(Generic[T]):
    """What a registry knows about one name; registries with more to say subclass it.

    Attributes:
        name: The registered name.
        obj: The registered object (a class for adapters and detectors).
        description: One line for `stream-monitor list`.
    """

    name: str
    obj: T
    description: str = ""


class Registry(Generic[T]):
    """A named registry; `@registry.register("name", description=..., **metadata)` adds an entry.

    Args:
        kind: What an entry is, for messages ("adapter": "Unknown adapter ...").
        info_type: The metadata record each entry gets; `register`'s keywords are its fields, so
            a misspelt or unknown keyword fails at import rather than being ignored.
    """

    def __init__(self, kind: str, info_type: type[Info[T]] = Info) -> None:
        self.kind = kind
        self.info_type = info_type
        self._entries: dict[str, Info[T]] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = self.info_type(name=name, obj=obj, **metadata)
            return obj

        return add

    def info(self, name: str) -> Info[T]:
        """The metadata of `name`; raises UnknownNameError listing the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries)) from None

    def get(self, name: str) -> T:
        """The object registered as `name`; raises UnknownNameError listing the valid names."""
        return self.info(name).obj

    def infos(self) -> list[Info[T]]:
        """Every entry's metadata, by name."""
        return [self._entries[name] for name in self.names()]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
