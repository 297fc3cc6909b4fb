"""Toxics: what the proxy does to the bytes of one direction, sans-IO.

A :class:`Toxic` is a frozen, validated value: a *type* with its attributes
(one of the classes below, e.g. :class:`Latency`), the :class:`Stream` it
applies to, a *toxicity* (the probability that it applies to a given
connection) and a name. The same values come in through the Python API and
as JSON through the control API (:func:`toxic_from_json`), and every bad
value raises :class:`~trioheart.ConfigError` naming the field and the value,
before anything changes.

Unlike Toxiproxy, every duration is a float number of **seconds** and every
rate is in **bytes per second**; the reference page maps Toxiproxy's units.

This module never imports trio.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Final, TypeAlias, final

import attrs

from ..errors import ConfigError

__all__ = [
    "Bandwidth",
    "Blackhole",
    "FrameKind",
    "Latency",
    "LimitData",
    "NatIdle",
    "ResetPeer",
    "Slicer",
    "SlowClose",
    "Stall",
    "Stream",
    "Timeout",
    "Toxic",
    "ToxicAttributes",
    "WsDelay",
    "WsDrop",
    "toxic_from_json",
    "toxic_to_json",
    "updated_toxic",
]


class Stream(enum.StrEnum):
    """Which direction of a proxied connection a toxic applies to."""

    #: Client to upstream server (requests, the client's frames).
    UPSTREAM = "upstream"
    #: Upstream server to client (responses, the server's frames). The default.
    DOWNSTREAM = "downstream"
    #: Both directions. Required by :class:`NatIdle`, whose mapping is shared.
    BOTH = "both"


class FrameKind(enum.StrEnum):
    """The WebSocket frames a frame-aware toxic can single out."""

    #: Ping control frames (opcode 0x9).
    PING = "ping"
    #: Pong control frames (opcode 0xA).
    PONG = "pong"
    #: Data frames: text, binary and their continuations. Dropping works on
    #: whole messages, so a fragmented message is dropped with all its
    #: fragments and the stream stays valid.
    DATA = "data"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise ConfigError(
            f"{attribute.name} must be a non-negative, finite number of seconds; got {value!r}"
        )


def _positive_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        raise ConfigError(
            f"{attribute.name} must be a positive, finite number of seconds; got {value!r}"
        )


def _positive_rate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        raise ConfigError(
            f"{attribute.name} must be a positive, finite number of bytes per second; got {value!r}"
        )


def _optional_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _seconds(instance, attribute, value)


def _probability(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        raise ConfigError(f"{attribute.name} must be a number in [0, 1]; got {value!r}")


def _int_at_least(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{attribute.name} must be an integer >= {minimum}; got {value!r}")

    return check


def _frames(value: object) -> frozenset[FrameKind]:
    items: Iterable[object]
    if isinstance(value, str | FrameKind):
        items = [value]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ConfigError(f"frames must be 'ping', 'pong', 'data' or a list of them; got {value!r}")
    kinds = set()
    for item in items:
        try:
            kinds.add(FrameKind(item))  # type: ignore[arg-type]
        except ValueError:
            raise ConfigError(
                f"frames must be 'ping', 'pong', 'data' or a list of them; got {value!r}"
            ) from None
    if not kinds:
        raise ConfigError(f"frames must name at least one of 'ping', 'pong', 'data'; got {value!r}")
    return frozenset(kinds)


class _Attributes:
    """Shared behaviour of the toxic attribute classes."""

    #: The toxic's type name, as in the control API's ``type`` field.
    type: ClassVar[str]

    def to_json(self) -> dict[str, object]:
        """The attributes as a JSON-ready dict."""
        out: dict[str, object] = {}
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, frozenset):
                value = sorted(str(v) for v in value)
            out[field.name] = value
        return out


@final
@attrs.frozen(kw_only=True)
class Latency(_Attributes):
    """Delay every chunk by *latency* ± *jitter* seconds (uniform), keeping order.

    Args:
      latency: The delay added to each chunk, in seconds.
      jitter: The chunk's delay varies uniformly within ± this, never below zero.
    """

    type: ClassVar[str] = "latency"
    latency: float = attrs.field(default=0.0, validator=_seconds)
    jitter: float = attrs.field(default=0.0, validator=_seconds)


@final
@attrs.frozen(kw_only=True)
class Bandwidth(_Attributes):
    """Limit the direction to *rate* bytes per second.

    Args:
      rate: The rate, in bytes per second (Toxiproxy's KB/s times 1000).
    """

    type: ClassVar[str] = "bandwidth"
    rate: float = attrs.field(validator=_positive_rate)


@final
@attrs.frozen(kw_only=True)
class SlowClose(_Attributes):
    """Delay forwarding the close (the TCP FIN) by *delay* seconds.

    Args:
      delay: How long the close waits after everything before it was sent.
    """

    type: ClassVar[str] = "slow_close"
    delay: float = attrs.field(validator=_seconds)


@final
@attrs.frozen(kw_only=True)
class Timeout(_Attributes):
    """Drop all data; close the connection *timeout* seconds after it applies.

    Args:
      timeout: Seconds until the connection is closed (a FIN to both peers);
        ``0`` never closes it, data is dropped until the toxic is removed.
    """

    type: ClassVar[str] = "timeout"
    timeout: float = attrs.field(default=0.0, validator=_seconds)


@final
@attrs.frozen(kw_only=True)
class ResetPeer(_Attributes):
    """Reset the connection (TCP RST to both peers) *timeout* seconds after it applies.

    Unlike Toxiproxy, which waits for the next chunk of data first, the
    timer starts when the toxic starts to apply, so idle connections are
    reset too.

    Args:
      timeout: Seconds until the reset; ``0`` resets at once.
    """

    type: ClassVar[str] = "reset_peer"
    timeout: float = attrs.field(default=0.0, validator=_seconds)


@final
@attrs.frozen(kw_only=True)
class Slicer(_Attributes):
    """Send the data in small writes of *average_size* ± *size_variation* bytes.

    Args:
      average_size: The average size of one write, in bytes.
      size_variation: Each write's size varies uniformly within ± this;
        must be smaller than *average_size*.
      delay: The pause after each write, in seconds (Toxiproxy: microseconds).
    """

    type: ClassVar[str] = "slicer"
    average_size: int = attrs.field(validator=_int_at_least(1))
    size_variation: int = attrs.field(default=0, validator=_int_at_least(0))
    delay: float = attrs.field(default=0.0, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        if self.size_variation >= self.average_size:
            raise ConfigError(
                "size_variation must be smaller than average_size; got "
                f"{self.size_variation!r} >= {self.average_size!r}"
            )


@final
@attrs.frozen(kw_only=True)
class LimitData(_Attributes):
    """Close the connection once *bytes* bytes went through in this direction.

    Args:
      bytes: How many bytes are forwarded (counted from when the toxic
        starts to apply) before the connection is closed.
    """

    type: ClassVar[str] = "limit_data"
    bytes: int = attrs.field(validator=_int_at_least(0))


@final
@attrs.frozen(kw_only=True)
class Blackhole(_Attributes):
    """Stop forwarding silently; both sockets stay open.

    The peer vanished: data is read and discarded (so the proxy holds no
    memory for it), nothing is sent and nothing is closed. A close from the
    sender is held back until the toxic is removed. Discarded data is lost
    for good, so a stream that went through a blackhole is usually unusable
    afterwards, like the path it models.
    """

    type: ClassVar[str] = "blackhole"


@final
@attrs.frozen(kw_only=True)
class NatIdle(_Attributes):
    """A NAT mapping forgotten after *timeout* seconds without traffic.

    Any chunk in either direction refreshes the mapping. Once nothing passed
    for *timeout* seconds, every later chunk, close or reset in either
    direction is dropped silently: no RST, no FIN (the Azure load balancer
    and home-router case). The mapping stays forgotten for that connection
    while the toxic is there (removing it heals the path, but what was
    dropped is gone); new connections get a fresh one. Must apply to
    :attr:`Stream.BOTH`.

    Args:
      timeout: The idle timeout, in seconds.
    """

    type: ClassVar[str] = "nat_idle"
    timeout: float = attrs.field(validator=_positive_seconds)


@final
@attrs.frozen(kw_only=True)
class Stall(_Attributes):
    """Pause the direction for *duration* seconds, then deliver everything.

    The pause starts when the toxic is added (or updated) and is the same
    window for every connection: a GC pause or frozen tab on the far side.
    The proxy keeps reading until the connection's buffer limit, then
    stops reading (backpressure), so nothing is lost.

    Args:
      duration: The length of the pause in seconds, or ``None`` to pause
        until the toxic is removed.
    """

    type: ClassVar[str] = "stall"
    duration: float | None = attrs.field(default=None, validator=_optional_seconds)


@final
@attrs.frozen(kw_only=True)
class WsDrop(_Attributes):
    """Drop WebSocket frames of the given kinds, whole (after the HTTP upgrade).

    Data is dropped a message at a time, with all its fragments; control
    frames one at a time. The rest of the stream is untouched, so it stays
    valid. (With ``permessage-deflate`` context takeover, dropping data
    breaks the receiver's decompression: drop only control frames there.)

    Args:
      frames: ``"ping"``, ``"pong"``, ``"data"``, or a collection of them.
      probability: The chance that each matching frame (or data message)
        is dropped, drawn independently.
    """

    type: ClassVar[str] = "ws_drop"
    frames: frozenset[FrameKind] = attrs.field(converter=_frames)
    probability: float = attrs.field(default=1.0, validator=_probability)


@final
@attrs.frozen(kw_only=True)
class WsDelay(_Attributes):
    """Delay WebSocket frames of the given kinds by *delay* seconds.

    Other frames are not held up, so, for example, delayed pings are
    overtaken by data. Frames are only ever moved whole, never split, and
    a close frame never overtakes anything, so the stream stays valid.

    Args:
      frames: ``"ping"``, ``"pong"``, ``"data"``, or a collection of them.
      delay: The added delay, in seconds.
    """

    type: ClassVar[str] = "ws_delay"
    frames: frozenset[FrameKind] = attrs.field(converter=_frames)
    delay: float = attrs.field(validator=_seconds)


#: Any of the toxic attribute classes.
ToxicAttributes: TypeAlias = (
    Latency
    | Bandwidth
    | SlowClose
    | Timeout
    | ResetPeer
    | Slicer
    | LimitData
    | Blackhole
    | NatIdle
    | Stall
    | WsDrop
    | WsDelay
)

_TYPES: Final[dict[str, type[ToxicAttributes]]] = {
    cls.type: cls
    for cls in (
        Latency,
        Bandwidth,
        SlowClose,
        Timeout,
        ResetPeer,
        Slicer,
        LimitData,
        Blackhole,
        NatIdle,
        Stall,
        WsDrop,
        WsDelay,
    )
}
TOXIC_TYPES: Final = tuple(_TYPES)

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _check_attributes(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple(_TYPES.values())):
        raise ConfigError(
            f"attributes must be one of the toxic classes ({', '.join(TOXIC_TYPES)}); got {value!r}"
        )


def _stream(value: object) -> Stream:
    try:
        return Stream(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(
            f"stream must be 'upstream', 'downstream' or 'both'; got {value!r}"
        ) from None


def _default_stream(self: Toxic) -> Stream:
    return Stream.BOTH if isinstance(self.attributes, NatIdle) else Stream.DOWNSTREAM


def _default_name(self: Toxic) -> str:
    # Validators run after every default, so the attributes may still be bad here.
    return f"{getattr(self.attributes, 'type', 'toxic')}_{self.stream}"


def _check_name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"name must be 1 to 64 characters from A-Z a-z 0-9 _ . -; got {value!r}")


@final
@attrs.frozen(kw_only=True)
class Toxic:
    """One toxic: what it does, where, how often, and its name.

    Args:
      attributes: What it does: an instance of one of the toxic classes.
      stream: The direction it applies to; defaults to
        :attr:`Stream.DOWNSTREAM` (as in Toxiproxy), or :attr:`Stream.BOTH`
        for :class:`NatIdle`.
      toxicity: The probability, in [0, 1], that it applies to a given
        connection, drawn once per connection when it starts to apply.
      name: Unique within a proxy; defaults to ``"<type>_<stream>"``.

    Raises:
      ConfigError: naming the field and the value.
    """

    attributes: ToxicAttributes = attrs.field(validator=_check_attributes)
    stream: Stream = attrs.field(
        default=attrs.Factory(_default_stream, takes_self=True), converter=_stream
    )
    toxicity: float = attrs.field(default=1.0, validator=_probability)
    name: str = attrs.field(
        default=attrs.Factory(_default_name, takes_self=True), validator=_check_name
    )

    def __attrs_post_init__(self) -> None:
        if isinstance(self.attributes, NatIdle) and self.stream is not Stream.BOTH:
            raise ConfigError(
                "stream must be 'both' for a nat_idle toxic (one mapping serves both "
                f"directions); got {str(self.stream)!r}"
            )

    @property
    def type(self) -> str:
        """The type name, e.g. ``"latency"``."""
        return self.attributes.type

    def applies_to(self, direction: Stream) -> bool:
        """Whether this toxic acts on *direction* (upstream or downstream)."""
        return self.stream is Stream.BOTH or self.stream is direction


def toxic_to_json(toxic: Toxic) -> dict[str, object]:
    """*toxic* as the control API shows it."""
    return {
        "name": toxic.name,
        "type": toxic.type,
        "stream": str(toxic.stream),
        "toxicity": toxic.toxicity,
        "attributes": toxic.attributes.to_json(),
    }


_TOXIC_FIELDS: Final = frozenset({"name", "type", "stream", "toxicity", "attributes"})


def _attributes_from_json(kind: str, attributes: object) -> ToxicAttributes:
    cls = _TYPES[kind]
    if not isinstance(attributes, Mapping):
        raise ConfigError(f"attributes must be a JSON object; got {attributes!r}")
    known = {field.name for field in attrs.fields(cls)}
    unknown = sorted(str(key) for key in attributes if key not in known)
    if unknown:
        raise ConfigError(
            f"unknown attribute {unknown[0]!r} for a {kind} toxic; it takes "
            f"{', '.join(sorted(known)) or 'no attributes'}"
        )
    try:
        return cls(**{str(key): value for key, value in attributes.items()})
    except TypeError as exc:  # a required attribute is missing
        missing = sorted(
            field.name
            for field in attrs.fields(cls)
            if field.default is attrs.NOTHING and field.name not in attributes
        )
        raise ConfigError(
            f"attribute {missing[0]!r} is required for a {kind} toxic"
            if missing
            else f"bad attributes for a {kind} toxic: {exc}"
        ) from None


def toxic_from_json(obj: object) -> Toxic:
    """Build a :class:`Toxic` from its JSON form (as the control API takes it).

    The form is ``{"type": ..., "name": ..., "stream": ..., "toxicity": ...,
    "attributes": {...}}``; only ``type`` is required.

    Raises:
      ConfigError: for an unknown field, type or attribute, or a bad value.
    """
    if not isinstance(obj, Mapping):
        raise ConfigError(f"a toxic must be a JSON object; got {obj!r}")
    unknown = sorted(str(key) for key in obj if key not in _TOXIC_FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown field {unknown[0]!r}; a toxic has {', '.join(sorted(_TOXIC_FIELDS))}"
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ConfigError(f"type must be one of {', '.join(TOXIC_TYPES)}; got {kind!r}")
    kwargs: dict[str, Any] = {"attributes": _attributes_from_json(kind, obj.get("attributes", {}))}
    for key in ("name", "stream", "toxicity"):
        if key in obj:
            kwargs[key] = obj[key]
    return Toxic(**kwargs)


def updated_toxic(toxic: Toxic, changes: object) -> Toxic:
    """*toxic* with the JSON *changes* applied, validated as a whole.

    *changes* may set ``toxicity`` and any of ``attributes`` (merged into
    the current ones). ``name``, ``type`` and ``stream`` may be repeated
    but not changed: remove the toxic and add a new one for that.

    Raises:
      ConfigError: for a bad field or value; *toxic* is unchanged.
    """
    if not isinstance(changes, Mapping):
        raise ConfigError(f"an update must be a JSON object; got {changes!r}")
    unknown = sorted(str(key) for key in changes if key not in _TOXIC_FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown field {unknown[0]!r}; an update may set toxicity and attributes"
        )
    current = toxic_to_json(toxic)
    for key in ("name", "type", "stream"):
        if key in changes and changes[key] != current[key]:
            raise ConfigError(
                f"{key} cannot be changed ({current[key]!r} to {changes[key]!r}); "
                "remove the toxic and add a new one"
            )
    attributes = changes.get("attributes", {})
    if not isinstance(attributes, Mapping):
        raise ConfigError(f"attributes must be a JSON object; got {attributes!r}")
    merged = {**toxic.attributes.to_json(), **attributes}
    return attrs.evolve(
        toxic,
        attributes=_attributes_from_json(toxic.type, merged),
        toxicity=changes.get("toxicity", toxic.toxicity),
    )
