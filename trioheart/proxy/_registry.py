"""The proxy's toxics, in order, with the errors of changing them; sans-IO.

This module never imports trio.
"""

from __future__ import annotations

from typing import final

import attrs

from ..errors import ConfigError, TrioheartError
from ._engine import ToxicRecord
from .toxics import Toxic, ToxicAttributes

__all__ = ["ProxyError", "ToxicExists", "ToxicNotFound", "ToxicRegistry"]


class ProxyError(TrioheartError):
    """A proxy operation failed (e.g. it could not listen again on its address)."""


class ToxicNotFound(ProxyError, LookupError):
    """No toxic has that name."""


class ToxicExists(ProxyError):
    """A toxic of that name exists already."""


@final
class ToxicRegistry:
    """The toxics of one proxy, in the order they were added."""

    __slots__ = ("_records", "_version")

    def __init__(self) -> None:
        self._records: dict[str, ToxicRecord] = {}
        self._version = 0

    @property
    def records(self) -> tuple[ToxicRecord, ...]:
        """The records, in order."""
        return tuple(self._records.values())

    @property
    def toxics(self) -> tuple[Toxic, ...]:
        """The toxics, in order."""
        return tuple(record.toxic for record in self._records.values())

    def get(self, name: str) -> Toxic:
        """The toxic called *name*.

        Raises:
          ToxicNotFound: if there is none.
        """
        try:
            return self._records[name].toxic
        except KeyError:
            raise ToxicNotFound(f"no toxic is named {name!r}") from None

    def add(self, toxic: Toxic, *, now: float) -> Toxic:
        """Add *toxic* at the end.

        Raises:
          ToxicExists: if its name is taken; nothing changes.
        """
        if toxic.name in self._records:
            raise ToxicExists(
                f"a toxic named {toxic.name!r} exists already; update or remove it, "
                "or give the new one another name"
            )
        self._version += 1
        self._records[toxic.name] = ToxicRecord(toxic, now, self._version)
        return toxic

    def update(
        self,
        name: str,
        *,
        now: float,
        attributes: ToxicAttributes | None = None,
        toxicity: float | None = None,
    ) -> Toxic:
        """Change the attributes and/or toxicity of the toxic called *name*.

        Raises:
          ToxicNotFound: if there is none.
          ConfigError: for attributes of another type or a bad toxicity;
            nothing changes.
        """
        current = self.get(name)
        if attributes is not None and attributes.type != current.type:
            raise ConfigError(
                f"attributes must be for a {current.type} toxic; got a {attributes.type} "
                "(remove the toxic and add a new one)"
            )
        changed = attrs.evolve(
            current,
            attributes=current.attributes if attributes is None else attributes,
            toxicity=current.toxicity if toxicity is None else toxicity,
        )
        self._version += 1
        self._records[name] = ToxicRecord(changed, now, self._version)
        return changed

    def remove(self, name: str) -> None:
        """Remove the toxic called *name*.

        Raises:
          ToxicNotFound: if there is none.
        """
        self.get(name)
        del self._records[name]

    def clear(self) -> None:
        """Remove every toxic."""
        self._records.clear()
