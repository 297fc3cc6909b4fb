"""Heartbeat policies per group, region and client version, sans-IO.

A :class:`PolicySet` is what an operator writes (in a TOML file or under an
etcd key prefix): a *default* policy and named *rules*. Each rule matches
connections by group, region and client version (a semver range), may be
limited to a *rollout percentage* of them, and overrides some fields of the
default policy. :meth:`PolicySet.resolve` is a pure, total function from a
connection's :class:`ConnectionAttributes` to a :class:`Resolution`: the
:class:`ResolvedPolicy` in force, the name of the rule that chose it and the
revision of the set.

**Precedence.** Exactly one rule applies to a connection; its fields are
layered over the default policy's. Among the rules that match, the most
specific wins: a rule with a ``version`` criterion beats any rule without
one; among those equal so far, one with a ``region`` beats one without;
then one with a ``group`` beats one without. Among rules still tied, the
higher ``priority`` (an integer, 0 by default) wins, then the smaller name
in code-point order, so the outcome never depends on the order in which
rules were written or arrived. A connection no rule matches gets the
default policy, reported as rule ``"default"``.

**Rollout.** A rule with ``rollout_percent = p`` matches only the
connections whose *bucket* is below *p*. The bucket is a number in
``[0, 100)`` computed by BLAKE2b from the rule's ``rollout_salt`` (its name
unless set) and the connection's ``key`` (a user or device id), so it is the
same in every process, on every restart and on every reconnect, and raising
*p* only ever adds connections to the rule. A connection outside the rollout
falls through to the next matching rule, or the default.

**Validation.** A set is checked whole before it is accepted, and every
problem found is reported at once, each naming the rule and the field
(:class:`PolicyError`, :class:`PolicyProblem`). Besides types, NaN,
negatives and unknown keys, every rule's resolved policy (the default with
the rule layered over it) must make sense as a whole: see
:class:`ResolvedPolicy`.

Nothing here does I/O; the Trio sources that read a file or etcd and the
store that holds the current set live in :mod:`trioheart._trio.policy_sources`.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import tomllib
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, final

import attrs

from .config import ConnectionConfig
from .detector import DetectorConfig
from .errors import ConfigError
from .keepalive import MAX_KEEPCNT, MAX_KEEPIDLE, MAX_USER_TIMEOUT, KeepaliveConfig
from .resume import LogLimits

__all__ = [
    "DEFAULT_RULE",
    "ConnectionAttributes",
    "PolicyCensus",
    "PolicyError",
    "PolicyProblem",
    "PolicySet",
    "Resolution",
    "ResolvedPolicy",
    "Rule",
    "RuleMatch",
    "Version",
    "VersionRange",
    "load_policy_toml",
    "policy_set_from_kv",
    "rollout_bucket",
]

#: The rule name a :class:`Resolution` reports when no rule matched, and the
#: name under which problems of the default policy are reported.
DEFAULT_RULE: Final = "default"

#: The most rules one set may hold; a set with more is rejected.
MAX_RULES: Final = 1000
#: The most groups (or regions) one rule may list.
MAX_MATCH_VALUES: Final = 1000
#: Client versions longer than this are treated as unparseable.
MAX_VERSION_LENGTH: Final = 128

_RULE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_RESERVED_NAMES: Final = frozenset({DEFAULT_RULE, "defaults"})


# --------------------------------------------------------------------------
# Errors


@final
@attrs.frozen
class PolicyProblem:
    """One thing wrong with a policy set.

    Attributes:
      rule: The rule the problem is in: a rule's name, :data:`DEFAULT_RULE`
        for the default policy, or ``""`` for the set as a whole.
      field: The field (dotted for nested keys, e.g. ``match.version``), or
        ``""`` when the problem is not about one field.
      message: What is wrong, naming the field and the value.
    """

    rule: str
    field: str
    message: str

    def __str__(self) -> str:
        if self.rule == DEFAULT_RULE:
            return f"default policy: {self.message}"
        if self.rule:
            return f"rule {self.rule!r}: {self.message}"
        return self.message


class PolicyError(ConfigError):
    """A policy set was rejected; :attr:`problems` lists every reason.

    The message has one problem per line.
    """

    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


# --------------------------------------------------------------------------
# Versions and ranges


_NUM: Final = r"(?:0|[1-9][0-9]*)"
_PRE_ID: Final = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_PRERELEASE: Final = rf"{_PRE_ID}(?:\.{_PRE_ID})*"
_BUILD: Final = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_SEMVER: Final = re.compile(
    rf"({_NUM})\.({_NUM})\.({_NUM})(?:-({_PRERELEASE}))?(?:\+({_BUILD}))?", re.ASCII
)
_CLIENT_VERSION: Final = re.compile(
    rf"v?({_NUM})(?:\.({_NUM})(?:\.({_NUM}))?)?(?:-({_PRERELEASE}))?(?:\+({_BUILD}))?",
    re.ASCII,
)
_PARTIAL: Final = re.compile(rf"({_NUM})(?:\.({_NUM}))?", re.ASCII)
_WILDCARD: Final = re.compile(rf"({_NUM})\.(?:[xX*](?:\.[xX*])?|({_NUM})\.[xX*])", re.ASCII)


def _prerelease_ids(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(part) if part.isdigit() else part for part in text.split("."))


@final
@attrs.frozen
class Version:
    """A semantic version (semver 2.0.0).

    Versions are compared with :attr:`precedence`: numerically by major,
    minor and patch; a prerelease sorts before its release; build metadata
    is ignored.
    """

    major: int
    minor: int
    patch: int
    #: Prerelease identifiers (numbers as :class:`int`); empty for a release.
    prerelease: tuple[int | str, ...] = ()
    #: Build metadata; ignored by :attr:`precedence`.
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse a strict semver 2.0.0 version such as ``2.3.1-rc.1+build.7``.

        Raises:
          ConfigError: if *text* is not one.
        """
        match = _SEMVER.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(f"version must be a semver version like 2.3.1; got {text!r}")
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor), int(patch), _prerelease_ids(pre), build or "")

    @classmethod
    def parse_client(cls, text: str | None) -> Version | None:
        """Parse a version a client reported, or return ``None``.

        This never raises: a client's version is untrusted input. It accepts
        semver 2.0.0 with two leniencies: a leading ``v`` (``v2.3.1``) and
        missing minor or patch numbers (``2.3`` is ``2.3.0``). Anything else,
        or anything longer than :data:`MAX_VERSION_LENGTH` characters, gives
        ``None``, and then no rule with a ``version`` criterion matches.
        """
        if not isinstance(text, str) or len(text) > MAX_VERSION_LENGTH:
            return None
        match = _CLIENT_VERSION.fullmatch(text)
        if match is None:
            return None
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor or 0), int(patch or 0), _prerelease_ids(pre), build or "")

    @property
    def precedence(self) -> tuple[Any, ...]:
        """A key that orders versions by semver precedence."""
        if not self.prerelease:
            release: tuple[Any, ...] = (1,)
        else:
            release = (
                0,
                tuple(
                    (0, part, "") if isinstance(part, int) else (1, 0, part)
                    for part in self.prerelease
                ),
            )
        return (self.major, self.minor, self.patch, release)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(part) for part in self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def _lowest(major: int, minor: int, patch: int) -> Version:
    """The smallest version with this core: ``major.minor.patch-0``."""
    return Version(major, minor, patch, (0,))


@attrs.frozen
class _Interval:
    """One comparator, as an interval of versions; ``None`` is unbounded."""

    low: Version | None = None
    low_inclusive: bool = True
    high: Version | None = None
    high_inclusive: bool = False

    def contains(self, version: Version) -> bool:
        key = version.precedence
        if self.low is not None:
            low = self.low.precedence
            if key < low or (key == low and not self.low_inclusive):
                return False
        if self.high is not None:
            high = self.high.precedence
            if key > high or (key == high and not self.high_inclusive):
                return False
        return True


def _intersection_is_empty(intervals: Iterable[_Interval]) -> bool:
    low: tuple[tuple[Any, ...], bool] | None = None
    high: tuple[tuple[Any, ...], bool] | None = None
    for interval in intervals:
        if interval.low is not None:
            candidate = (interval.low.precedence, interval.low_inclusive)
            if (
                low is None
                or candidate[0] > low[0]
                or (candidate[0] == low[0] and not candidate[1])
            ):
                low = candidate
        if interval.high is not None:
            candidate = (interval.high.precedence, interval.high_inclusive)
            if (
                high is None
                or candidate[0] < high[0]
                or (candidate[0] == high[0] and not candidate[1])
            ):
                high = candidate
    if low is None or high is None:
        return False
    return low[0] > high[0] or (low[0] == high[0] and not (low[1] and high[1]))


def _partial_interval(op: str, major: int, minor: int | None) -> _Interval:
    """The interval a comparator with a partial version (``2``, ``2.3``) stands for.

    A partial version names a block of versions, prereleases included:
    ``2.3`` is ``[2.3.0-0, 2.4.0-0)``.
    """
    if minor is None:
        floor, ceiling = _lowest(major, 0, 0), _lowest(major + 1, 0, 0)
    else:
        floor, ceiling = _lowest(major, minor, 0), _lowest(major, minor + 1, 0)
    if op == ">=":
        return _Interval(low=floor)
    if op == ">":
        return _Interval(low=ceiling)
    if op == "<":
        return _Interval(high=floor)
    if op == "<=":
        return _Interval(high=ceiling)
    return _Interval(low=floor, high=ceiling)  # "=", "~" and no operator


def _caret_ceiling(major: int, minor: int | None, patch: int | None) -> Version:
    """Where ``^`` stops: the next change of the leftmost non-zero number given."""
    if major > 0 or minor is None:
        return _lowest(major + 1, 0, 0)
    if minor > 0 or patch is None:
        return _lowest(0, minor + 1, 0)
    return _lowest(0, 0, patch + 1)


def _parse_comparator(token: str, whole: str) -> _Interval:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"version range {whole!r}: {why}; got {token!r}")

    if not token:
        raise bad("empty comparator (a stray ',' or '||'?)")
    if any(ch.isspace() for ch in token):
        if re.fullmatch(r"(?:\^|~|>=|<=|>|<|=)\s+\S+", token):
            raise bad("write an operator and its version together, as in >=2.3")
        raise bad("separate comparators with ',' (AND) or '||' (OR), not spaces")
    if token in ("*", "x", "X"):
        return _Interval()
    wildcard = _WILDCARD.fullmatch(token)
    if wildcard is not None:
        major, minor = wildcard.groups()
        return _partial_interval("=", int(major), None if minor is None else int(minor))
    op = ""
    for candidate in ("^", "~", ">=", "<=", ">", "<", "="):
        if token.startswith(candidate):
            op, rest = candidate, token[len(candidate) :]
            break
    else:
        rest = token
    if op and (rest in ("*", "x", "X") or _WILDCARD.fullmatch(rest)):
        raise bad("a wildcard (*, 1.x, 1.2.x) stands alone, without an operator")
    full = _SEMVER.fullmatch(rest)
    if full is not None:
        major_s, minor_s, patch_s, pre, build = full.groups()
        if build:
            raise bad("build metadata (+...) has no meaning in a range")
        version = Version(int(major_s), int(minor_s), int(patch_s), _prerelease_ids(pre))
        if op == "^":
            return _Interval(
                low=version, high=_caret_ceiling(version.major, version.minor, version.patch)
            )
        if op == "~":
            return _Interval(low=version, high=_lowest(version.major, version.minor + 1, 0))
        if op == ">=":
            return _Interval(low=version)
        if op == ">":
            return _Interval(low=version, low_inclusive=False)
        if op == "<":
            return _Interval(high=version)
        if op == "<=":
            return _Interval(high=version, high_inclusive=True)
        return _Interval(low=version, high=version, high_inclusive=True)
    partial = _PARTIAL.fullmatch(rest)
    if partial is None:
        raise bad(
            "expected [OP]VERSION with OP one of ^ ~ >= <= > < =, a partial version "
            "like 1.2, or a wildcard like 1.x"
        )
    major_s, minor_s = partial.groups()
    major, minor = int(major_s), None if minor_s is None else int(minor_s)
    if op == "^":
        return _Interval(low=_lowest(major, minor or 0, 0), high=_caret_ceiling(major, minor, None))
    return _partial_interval(op or "=", major, minor)


@final
@attrs.frozen
class VersionRange:
    """A set of client versions, written like ``">=2.3.0,<3"`` or ``"^1.2 || ~0.9"``.

    The grammar is small and strict (anything else is a :class:`ConfigError`):

    * ``,`` is AND, ``||`` is OR (AND binds tighter); spaces are allowed only
      around them.
    * A comparator is ``OP VERSION`` with *OP* one of ``>=``, ``<=``, ``>``,
      ``<``, ``=`` (or none, meaning ``=``), ``^`` or ``~``; or a wildcard
      ``*``, ``1.x``, ``1.2.x`` (``X`` and ``*`` work as ``x``).
    * *VERSION* is a full semver version (``2.3.1``, ``2.3.1-rc.1``; build
      metadata is not allowed) or a partial one (``2``, ``2.3``).
    * A partial version names a whole block, prereleases included:
      ``2.3`` means ``>=2.3.0-0,<2.4.0-0``, so ``<3`` admits ``2.99.0`` but not
      ``3.0.0-rc.1``, and ``>=2.3`` admits ``2.3.0-beta``.
    * ``^`` keeps the leftmost non-zero number: ``^1.2.3`` is
      ``>=1.2.3,<2.0.0-0``, ``^0.2.3`` is ``>=0.2.3,<0.3.0-0``, ``^0.0.3`` is
      ``>=0.0.3,<0.0.4-0``, ``^1.2`` is ``>=1.2.0-0,<2.0.0-0``.
    * ``~`` keeps major and minor: ``~1.4.2`` is ``>=1.4.2,<1.5.0-0``, ``~1.4``
      is ``>=1.4.0-0,<1.5.0-0``, ``~1`` is ``>=1.0.0-0,<2.0.0-0``.
    * Full versions compare by semver precedence: ``>=2.3.0`` does not admit
      ``2.3.0-beta``, which comes before ``2.3.0``.
    * An alternative that obviously admits nothing (``>=3,<2``) is an error.

    Why not ``packaging.specifiers.SpecifierSet``: it implements PEP 440,
    not semver. It has no ``^``, its ``~=`` means something else, it
    normalises or rejects semver prereleases (``1.2.3-rc.1`` becomes
    ``1.2.3rc1``; ``1.2.3-beta.x.7`` is invalid) and it excludes
    prereleases by a different rule. Mobile and web clients report semver.
    """

    #: The text the range was parsed from.
    text: str
    _alternatives: tuple[tuple[_Interval, ...], ...] = attrs.field(repr=False, eq=False)

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse a range.

        Raises:
          ConfigError: naming the range and the comparator that is wrong.
        """
        if not isinstance(text, str):
            raise ConfigError(f"version range must be a string; got {text!r}")
        if len(text) > 1000:
            raise ConfigError(f"version range must be at most 1000 characters; got {len(text)}")
        alternatives = []
        for alternative in text.split("||"):
            intervals = tuple(
                _parse_comparator(token.strip(), text) for token in alternative.split(",")
            )
            if _intersection_is_empty(intervals):
                raise ConfigError(
                    f"version range {text!r}: {alternative.strip()!r} admits no version"
                )
            alternatives.append(intervals)
        return cls(text, tuple(alternatives))

    def contains(self, version: Version) -> bool:
        """Whether *version* is in the range."""
        return any(
            all(interval.contains(version) for interval in alternative)
            for alternative in self._alternatives
        )

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------
# Policy fields

_Check = Callable[[str, object], "str | None"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(name: str, value: object) -> str | None:
    if _is_number(value):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer too large for a float
            seconds = math.inf
        if 0 < seconds < math.inf:  # NaN fails this too
            return None
    return f"{name} must be a positive, finite number of seconds; got {value!r}"


def _kernel_seconds(name: str, value: object) -> str | None:
    # Linux takes TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds, 1..32767.
    if (
        not _is_number(value)
        or not 1 <= value <= MAX_KEEPIDLE  # type: ignore[operator]
        or value != int(value)  # type: ignore[call-overload]
    ):
        return f"{name} must be a whole number of seconds from 1 to {MAX_KEEPIDLE}; got {value!r}"
    return None


def _user_timeout(name: str, value: object) -> str | None:
    # TCP_USER_TIMEOUT is an int of milliseconds; 0 is the kernel's default.
    if not _is_number(value) or not (
        value == 0 or 0.001 <= value <= MAX_USER_TIMEOUT  # type: ignore[operator]
    ):
        return (
            f"{name} must be 0 (the kernel's default) or a number of seconds from 0.001 to "
            f"{MAX_USER_TIMEOUT}; got {value!r}"
        )
    return None


def _integer(low: int, high: int) -> _Check:
    def check(name: str, value: object) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            return f"{name} must be a whole number from {low} to {high}; got {value!r}"
        return None

    return check


def _boolean(name: str, value: object) -> str | None:
    if not isinstance(value, bool):
        return f"{name} must be true or false; got {value!r}"
    return None


#: The fields that hold float seconds (a TOML integer is taken as a float).
_FLOAT_FIELDS: Final = frozenset(
    {
        "ping_interval",
        "min_interval",
        "max_interval",
        "min_window",
        "max_window",
        "app_heartbeat_interval",
        "tcp_user_timeout",
        "idle_timeout",
        "resume_max_age",
    }
)

#: The fields the kernel takes in whole seconds (held as int).
_WHOLE_SECONDS_FIELDS: Final = frozenset({"keepalive_idle", "keepalive_interval"})

#: Every policy field, with the check of its type and range. The cross-field
#: constraints are in :func:`_cross_field_problems`.
_FIELDS: Final[dict[str, _Check]] = {
    "ping_interval": _seconds,
    "min_interval": _seconds,
    "max_interval": _seconds,
    "min_window": _seconds,
    "max_window": _seconds,
    "app_heartbeat": _boolean,
    "app_heartbeat_interval": _seconds,
    "keepalive": _boolean,
    "keepalive_idle": _kernel_seconds,
    "keepalive_interval": _kernel_seconds,
    "keepalive_count": _integer(1, MAX_KEEPCNT),
    "tcp_user_timeout": _user_timeout,
    "idle_timeout": _seconds,
    "resume_max_messages": _integer(1, 10_000_000),
    "resume_max_bytes": _integer(1, 2**40),
    "resume_max_age": _seconds,
}


def _attrs_check(check: _Check) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def validator(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and attribute.default is None:
            return
        message = check(attribute.name, value)
        if message is not None:
            raise ConfigError(message)

    return validator


def _validator(name: str) -> Callable[[object, attrs.Attribute[Any], object], None]:
    return _attrs_check(_FIELDS[name])


def _default_user_timeout(policy: Any) -> float:
    probing = float(policy.keepalive_idle + policy.keepalive_interval * policy.keepalive_count)
    return probing if probing <= MAX_USER_TIMEOUT else 0.0


@final
@attrs.frozen(kw_only=True)
class ResolvedPolicy:
    """The heartbeat settings for one connection. Durations are float seconds.

    Every field has a default, so a policy file need only name what it
    changes. Constructing one checks it whole and raises :class:`ConfigError`
    for the first problem; :meth:`PolicySet.from_mapping` reports all of them.

    Args:
      ping_interval: The base interval between WebSocket pings.
      min_interval: The lower bound of the adaptive ping interval (defaults
        to *ping_interval*).
      max_interval: The upper bound of the adaptive ping interval (defaults
        to *ping_interval*).
      min_window: The lower bound of the pong window (defaults to
        ``min(1.0, max_window)``).
      max_window: The upper bound of the pong window: how long the peer may
        stay silent after a ping before it is convicted.
      app_heartbeat: Whether to run the application-level heartbeat
        (``{"type": "ping"}`` messages) as well, for clients that cannot see
        WebSocket pings (browsers).
      app_heartbeat_interval: Its interval (defaults to *ping_interval*).
      keepalive: Whether to set TCP options on the socket at all: with
        ``False`` neither keepalive nor ``TCP_USER_TIMEOUT`` is set.
      keepalive_idle: ``TCP_KEEPIDLE``: whole seconds of idleness before the
        first probe.
      keepalive_interval: ``TCP_KEEPINTVL``: whole seconds between probes.
      keepalive_count: ``TCP_KEEPCNT``: unanswered probes before the kernel
        drops the connection.
      tcp_user_timeout: ``TCP_USER_TIMEOUT`` in seconds, or 0 to leave the
        kernel's default. Defaults to the keepalive probing time, as
        :class:`~trioheart.KeepaliveConfig` does.
      idle_timeout: The smallest idle timeout of a NAT, load balancer or
        proxy on the path, if known, else ``None``.
      resume_max_messages: The resume log keeps at most this many messages.
      resume_max_bytes: ... at most this many bytes.
      resume_max_age: ... and none older than this.

    Raises:
      ConfigError: if a value has the wrong type or range, or:
        ``min_interval <= ping_interval <= max_interval`` fails;
        ``min_window <= max_window`` fails;
        with *idle_timeout* known, ``max_interval`` exceeds half of it, or
        keepalive probing (``keepalive_idle + keepalive_interval *
        keepalive_count``) does not finish within it;
        with keepalive on and a *tcp_user_timeout* other than 0, it is
        shorter than the keepalive probing (it would cut the probing short).
    """

    ping_interval: float = attrs.field(default=20.0, validator=_validator("ping_interval"))
    min_interval: float = attrs.field(
        default=attrs.Factory(lambda self: self.ping_interval, takes_self=True),
        validator=_validator("min_interval"),
    )
    max_interval: float = attrs.field(
        default=attrs.Factory(lambda self: self.ping_interval, takes_self=True),
        validator=_validator("max_interval"),
    )
    max_window: float = attrs.field(default=20.0, validator=_validator("max_window"))
    min_window: float = attrs.field(
        default=attrs.Factory(lambda self: min(1.0, self.max_window), takes_self=True),
        validator=_validator("min_window"),
    )
    app_heartbeat: bool = attrs.field(default=False, validator=_validator("app_heartbeat"))
    app_heartbeat_interval: float = attrs.field(
        default=attrs.Factory(lambda self: self.ping_interval, takes_self=True),
        validator=_validator("app_heartbeat_interval"),
    )
    keepalive: bool = attrs.field(default=True, validator=_validator("keepalive"))
    keepalive_idle: int = attrs.field(default=30, validator=_validator("keepalive_idle"))
    keepalive_interval: int = attrs.field(default=10, validator=_validator("keepalive_interval"))
    keepalive_count: int = attrs.field(default=3, validator=_validator("keepalive_count"))
    tcp_user_timeout: float = attrs.field(
        default=attrs.Factory(_default_user_timeout, takes_self=True),
        validator=_validator("tcp_user_timeout"),
    )
    idle_timeout: float | None = attrs.field(default=None, validator=_validator("idle_timeout"))
    resume_max_messages: int = attrs.field(
        default=1000, validator=_validator("resume_max_messages")
    )
    resume_max_bytes: int = attrs.field(default=1_048_576, validator=_validator("resume_max_bytes"))
    resume_max_age: float = attrs.field(default=120.0, validator=_validator("resume_max_age"))

    def __attrs_post_init__(self) -> None:
        problems = _cross_field_problems(attrs.asdict(self))
        if problems:
            raise ConfigError(problems[0][1])

    @property
    def keepalive_probing(self) -> float:
        """Seconds from the last packet until keepalive gives up on a dead peer."""
        return float(self.keepalive_idle + self.keepalive_interval * self.keepalive_count)

    def detector_config(self) -> DetectorConfig:
        """The bounds for the connection's :class:`~trioheart.LivenessDetector`.

        Never raises for a :class:`ResolvedPolicy`: its checks include the
        detector's.
        """
        return DetectorConfig(
            ping_interval=self.ping_interval,
            ping_timeout=self.max_window,
            min_interval=self.min_interval,
            max_interval=self.max_interval,
            min_window=self.min_window,
            idle_timeout=self.idle_timeout,
        )

    def keepalive_config(self) -> KeepaliveConfig:
        """The L4 settings for the connection's socket.

        With :attr:`keepalive` off, ``KeepaliveConfig(enabled=False)``:
        nothing is set. Never raises for a :class:`ResolvedPolicy`.
        """
        if not self.keepalive:
            return KeepaliveConfig(enabled=False)
        return KeepaliveConfig(
            idle=self.keepalive_idle,
            interval=self.keepalive_interval,
            count=self.keepalive_count,
            user_timeout=self.tcp_user_timeout or None,
        )

    def connection_config(self, base: ConnectionConfig | None = None) -> ConnectionConfig:
        """*base* (or the defaults) with this policy's heartbeat and L4 settings.

        Sets :attr:`~trioheart.ConnectionConfig.heartbeat`,
        :attr:`~trioheart.ConnectionConfig.keepalive` and
        :attr:`~trioheart.ConnectionConfig.app_heartbeat_interval`; every
        other field (timeouts, queue bounds) is *base*'s as it stands.
        """
        return attrs.evolve(
            ConnectionConfig() if base is None else base,
            heartbeat=self.detector_config(),
            keepalive=self.keepalive_config(),
            app_heartbeat_interval=self.app_heartbeat_interval if self.app_heartbeat else None,
        )

    def replay_limits(self) -> LogLimits:
        """What a resuming connection under this policy may be replayed.

        The ``resume_*`` keys as :class:`~trioheart.resume.LogLimits`, for
        :func:`trioheart.join_room` (which uses them by default): a room's
        log is shared, so they narrow this connection's replay rather than
        the log itself.
        """
        return LogLimits(
            max_messages=self.resume_max_messages,
            max_bytes=self.resume_max_bytes,
            max_age=self.resume_max_age,
        )

    def to_dict(self) -> dict[str, object]:
        """Every field, by name (``None`` for an unset optional one)."""
        return attrs.asdict(self)


def _cross_field_problems(
    policy: Mapping[str, Any], *, explicit: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """The constraints between fields, as ``(field, message)`` pairs.

    *policy* has every field, each already of the right type and range.
    *explicit*, if given, names the fields that were set rather than left to
    follow another: a problem is then reported on the field that was set.
    """
    problems = []
    ping, low, high = policy["ping_interval"], policy["min_interval"], policy["max_interval"]
    if not low <= ping <= high:
        problems.append(
            (
                "ping_interval",
                "ping_interval must lie within [min_interval, max_interval]; got "
                f"{ping!r} not in [{low!r}, {high!r}]",
            )
        )
    if policy["min_window"] > policy["max_window"]:
        problems.append(
            (
                "min_window",
                f"min_window must not exceed max_window; got {policy['min_window']!r} > "
                f"{policy['max_window']!r}",
            )
        )
    idle = policy["idle_timeout"]
    probing = policy["keepalive_idle"] + policy["keepalive_interval"] * policy["keepalive_count"]
    if idle is not None:
        if high > idle / 2:
            name = (
                "max_interval"
                if explicit is None or "max_interval" in explicit
                else "ping_interval"
            )
            problems.append(
                (
                    name,
                    f"{name} must be at most half of idle_timeout, so pings keep the "
                    f"path's idle mappings alive; got {high!r} > {idle!r} / 2",
                )
            )
        if policy["keepalive"] and probing > idle:
            problems.append(
                (
                    "keepalive_idle",
                    "keepalive probing (keepalive_idle + keepalive_interval * keepalive_count) "
                    f"must finish within idle_timeout; got {probing!r} > {idle!r}",
                )
            )
    user_timeout = policy["tcp_user_timeout"]
    if policy["keepalive"] and user_timeout != 0 and user_timeout < probing:
        problems.append(
            (
                "tcp_user_timeout",
                "tcp_user_timeout must cover keepalive probing (keepalive_idle + "
                "keepalive_interval * keepalive_count), or it cuts the probing short; got "
                f"{user_timeout!r} < {probing!r}",
            )
        )
    return problems


# --------------------------------------------------------------------------
# Rules


@final
@attrs.frozen(kw_only=True)
class ConnectionAttributes:
    """What a rule can match a connection on.

    Args:
      key: A stable identity for the rollout bucket: a user or device id,
        so that a client stays in (or out of) a rollout across reconnects.
      group: The connection's group (e.g. ``"mobile"``), if any.
      region: The connection's region (e.g. ``"eu-west"``), if any.
      client_version: The version the client reported, unparsed (see
        :meth:`Version.parse_client`), if any.
    """

    key: str
    group: str | None = None
    region: str | None = None
    client_version: str | None = None


def rollout_bucket(key: str, salt: str) -> float:
    """The rollout bucket of *key* under *salt*: a number in ``[0, 100)``.

    A rule with ``rollout_percent = p`` admits the keys whose bucket is
    below *p*. It is BLAKE2b, not :func:`hash`, so every process on every
    machine agrees. Buckets have a resolution of 0.01.
    """
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"),
        digest_size=8,
        person=b"trioheart-ro",
        salt=hashlib.blake2b(salt.encode("utf-8", "surrogatepass"), digest_size=16).digest(),
    ).digest()
    return (int.from_bytes(digest, "big") % 10_000) / 100


@final
@attrs.frozen(kw_only=True)
class RuleMatch:
    """The criteria of a rule; ``None`` matches anything."""

    #: The groups this rule matches (any of them).
    group: frozenset[str] | None = None
    #: The regions this rule matches (any of them).
    region: frozenset[str] | None = None
    #: The client versions this rule matches.
    version: VersionRange | None = None

    @property
    def specificity(self) -> tuple[bool, bool, bool]:
        """Which criteria are set, most significant first: (version, region, group)."""
        return (self.version is not None, self.region is not None, self.group is not None)

    def matches(self, attributes: ConnectionAttributes, version: Version | None) -> bool:
        """Whether *attributes* (with the client version already parsed) match."""
        if self.group is not None and attributes.group not in self.group:
            return False
        if self.region is not None and attributes.region not in self.region:
            return False
        return self.version is None or (version is not None and self.version.contains(version))


@final
@attrs.frozen(kw_only=True)
class Rule:
    """A named rule of a :class:`PolicySet`, with its resolved policy."""

    name: str
    match: RuleMatch
    #: The share of matching connections the rule applies to, in [0, 100].
    rollout_percent: float = 100.0
    #: What :func:`rollout_bucket` hashes the key with (the name by default).
    rollout_salt: str
    #: Among equally specific rules, the higher priority is tried first.
    priority: int = 0
    #: Free text for operators.
    description: str = ""
    #: The fields this rule sets, as ``(name, value)`` pairs in name order.
    overrides: tuple[tuple[str, object], ...]
    #: The default policy with :attr:`overrides` layered over it.
    policy: ResolvedPolicy

    @property
    def sort_key(self) -> tuple[bool, bool, bool, int, str]:
        """Rules are tried in this order; the first that admits a connection wins."""
        version, region, group = self.match.specificity
        return (not version, not region, not group, -self.priority, self.name)

    def admits(self, attributes: ConnectionAttributes, version: Version | None) -> bool:
        """Whether this rule applies to a connection."""
        if not self.match.matches(attributes, version):
            return False
        if self.rollout_percent >= 100:
            return True
        return rollout_bucket(attributes.key, self.rollout_salt) < self.rollout_percent


@final
@attrs.frozen
class Resolution:
    """What :meth:`PolicySet.resolve` found for one connection."""

    #: The policy in force.
    policy: ResolvedPolicy
    #: The name of the rule that chose it, or :data:`DEFAULT_RULE`.
    rule: str
    #: The revision of the policy set.
    revision: int


# --------------------------------------------------------------------------
# Parsing and validating a set


def _unknown_key(rule: str, prefix: str, key: object, allowed: Iterable[str]) -> PolicyProblem:
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return PolicyProblem(rule, f"{prefix}{key}", f"unknown key {prefix}{key!s}{hint}")


def _parse_fields(
    rule: str, table: Mapping[str, object], skip: Iterable[str], problems: list[PolicyProblem]
) -> dict[str, object]:
    values: dict[str, object] = {}
    skipped = set(skip)
    for key, value in table.items():
        if key in skipped:
            continue
        check = _FIELDS.get(key)
        if check is None:
            problems.append(_unknown_key(rule, "", key, [*_FIELDS, *skipped]))
            continue
        message = check(key, value)
        if message is not None:
            problems.append(PolicyProblem(rule, key, message))
        elif key in _FLOAT_FIELDS and isinstance(value, int):
            values[key] = float(value)  # TOML's 20 is the 20.0 the policy holds
        elif key in _WHOLE_SECONDS_FIELDS:
            values[key] = int(value)  # type: ignore[call-overload]  # 30.0 is 30
        else:
            values[key] = value
    return values


def _parse_names(
    rule: str, field: str, value: object, problems: list[PolicyProblem]
) -> frozenset[str] | None:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or not items
        or len(items) > MAX_MATCH_VALUES
        or not all(isinstance(item, str) and item for item in items)
    ):
        problems.append(
            PolicyProblem(
                rule,
                field,
                f"{field} must be a non-empty string or a list of 1 to {MAX_MATCH_VALUES} "
                f"non-empty strings; got {value!r}",
            )
        )
        return None
    return frozenset(items)


def _parse_match(rule: str, value: object, problems: list[PolicyProblem]) -> RuleMatch:
    if not isinstance(value, Mapping):
        problems.append(PolicyProblem(rule, "match", f"match must be a table; got {value!r}"))
        return RuleMatch()
    allowed = ("group", "region", "version")
    for key in value:
        if key not in allowed:
            problems.append(_unknown_key(rule, "match.", key, allowed))
    group = region = version = None
    if "group" in value:
        group = _parse_names(rule, "match.group", value["group"], problems)
    if "region" in value:
        region = _parse_names(rule, "match.region", value["region"], problems)
    if "version" in value:
        try:
            version = VersionRange.parse(value["version"])
        except ConfigError as exc:
            problems.append(PolicyProblem(rule, "match.version", f"match.version: {exc}"))
    return RuleMatch(group=group, region=region, version=version)


_RULE_KEYS: Final = ("match", "rollout_percent", "rollout_salt", "priority", "description")
_PRIORITY: Final = _integer(-1000, 1000)


def _complete(fields: Mapping[str, object]) -> dict[str, Any]:
    """Every field of a :class:`ResolvedPolicy`: *fields*, else the defaults.

    A default that follows another field (``min_interval`` follows
    ``ping_interval``) follows the value given here.
    """
    values: dict[str, Any] = {}
    so_far = types.SimpleNamespace()
    for attribute in attrs.fields(ResolvedPolicy):
        default: Any = attribute.default
        if attribute.name in fields:
            value = fields[attribute.name]
        elif hasattr(default, "factory"):  # an attrs.Factory(..., takes_self=True)
            value = default.factory(so_far)
        else:
            value = default
        values[attribute.name] = value
        setattr(so_far, attribute.name, value)
    return values


def _layered(
    rule: str,
    base: Mapping[str, object],
    overrides: Mapping[str, object],
    problems: list[PolicyProblem],
) -> ResolvedPolicy | None:
    """*overrides* over *base* over the defaults, or ``None`` after adding problems."""
    values = _complete({**base, **overrides})
    cross = _cross_field_problems(values, explicit={*base, *overrides})
    for field, message in cross:
        problems.append(PolicyProblem(rule, field, message))
    return None if cross else ResolvedPolicy(**values)


def _parse_rule(
    name: object,
    table: object,
    base: Mapping[str, object],
    problems: list[PolicyProblem],
) -> Rule | None:
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name) or name in _RESERVED_NAMES:
        problems.append(
            PolicyProblem(
                str(name),
                "",
                "a rule name must be 1 to 64 characters of letters, digits, '_', '.' and '-', "
                f"starting with a letter or digit, and not 'default' or 'defaults'; got {name!r}",
            )
        )
        return None
    if not isinstance(table, Mapping):
        problems.append(PolicyProblem(name, "", f"a rule must be a table; got {table!r}"))
        return None
    before = len(problems)
    overrides = _parse_fields(name, table, _RULE_KEYS, problems)
    match = _parse_match(name, table.get("match", {}), problems)
    rollout = table.get("rollout_percent", 100.0)
    if not _is_number(rollout) or not 0 <= rollout <= 100:
        problems.append(
            PolicyProblem(
                name,
                "rollout_percent",
                f"rollout_percent must be a number from 0 to 100; got {rollout!r}",
            )
        )
    salt = table.get("rollout_salt", name)
    if not isinstance(salt, str) or not salt:
        problems.append(
            PolicyProblem(
                name, "rollout_salt", f"rollout_salt must be a non-empty string; got {salt!r}"
            )
        )
    priority = table.get("priority", 0)
    message = _PRIORITY("priority", priority)
    if message is not None:
        problems.append(PolicyProblem(name, "priority", message))
    description = table.get("description", "")
    if not isinstance(description, str):
        problems.append(
            PolicyProblem(name, "description", f"description must be a string; got {description!r}")
        )
    if len(problems) > before:
        return None
    policy = _layered(name, base, overrides, problems)
    if policy is None:
        return None
    return Rule(
        name=name,
        match=match,
        rollout_percent=float(rollout),
        rollout_salt=salt,
        priority=priority,
        description=description,
        overrides=tuple(sorted(overrides.items())),
        policy=policy,
    )


@final
@attrs.frozen(kw_only=True)
class PolicySet:
    """A validated set of heartbeat policies: a default and rules.

    Build one with :meth:`from_mapping`, :func:`load_policy_toml` or
    :func:`policy_set_from_kv`; each checks the whole set first.
    """

    #: Set by the source: the file's ``revision``, or the etcd revision.
    revision: int
    #: The fields the default policy sets explicitly, in name order.
    default_overrides: tuple[tuple[str, object], ...] = ()
    #: The default policy (the built-in defaults with the overrides).
    default: ResolvedPolicy = attrs.field(factory=ResolvedPolicy)
    #: The rules, in the order they are tried (most specific first).
    rules: tuple[Rule, ...] = ()

    @classmethod
    def builtin(cls) -> PolicySet:
        """Revision 0: the built-in defaults and no rules."""
        return cls(revision=0)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, revision: int | None = None) -> PolicySet:
        """Check and build a set from its document form.

        The document is a mapping with a ``default`` table (the default
        policy's fields), a ``rules`` table of tables (rule name to rule)
        and, unless *revision* is passed, a ``revision``. See
        :doc:`/reference/policy-file` for every key.

        Args:
          data: The document, e.g. from :func:`tomllib.loads`.
          revision: The revision, when the source assigns it (etcd).

        Raises:
          PolicyError: listing every problem found, each naming the rule
            and the field.
        """
        problems: list[PolicyProblem] = []
        if not isinstance(data, Mapping):
            raise PolicyError(
                [PolicyProblem("", "", f"a policy set must be a table; got {data!r}")]
            )
        allowed = ("revision", "default", "rules")
        for key in data:
            if key not in allowed:
                problems.append(_unknown_key("", "", key, allowed))
        if revision is None:
            revision = data.get("revision")  # type: ignore[assignment]
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
                problems.append(
                    PolicyProblem(
                        "",
                        "revision",
                        f"revision must be a whole number >= 1, raised on every change; "
                        f"got {revision!r}",
                    )
                )
                revision = 0
        elif "revision" in data:
            problems.append(
                PolicyProblem("", "revision", "revision is set by this source; remove the key")
            )
        default_table = data.get("default", {})
        default_values: dict[str, object] = {}
        default_policy: ResolvedPolicy | None = None
        if not isinstance(default_table, Mapping):
            problems.append(
                PolicyProblem(DEFAULT_RULE, "", f"default must be a table; got {default_table!r}")
            )
        else:
            before = len(problems)
            default_values = _parse_fields(DEFAULT_RULE, default_table, (), problems)
            if len(problems) == before:
                default_policy = _layered(DEFAULT_RULE, {}, default_values, problems)
        rules_table = data.get("rules", {})
        rules: list[Rule] = []
        if not isinstance(rules_table, Mapping):
            problems.append(
                PolicyProblem("", "rules", f"rules must be a table of tables; got {rules_table!r}")
            )
        elif len(rules_table) > MAX_RULES:
            problems.append(
                PolicyProblem(
                    "", "rules", f"a set may hold at most {MAX_RULES} rules; got {len(rules_table)}"
                )
            )
        elif default_policy is not None:
            for name, table in rules_table.items():
                rule = _parse_rule(name, table, default_values, problems)
                if rule is not None:
                    rules.append(rule)
        if problems or default_policy is None:
            raise PolicyError(problems)
        return cls(
            revision=revision,
            default_overrides=tuple(sorted(default_values.items())),
            default=default_policy,
            rules=tuple(sorted(rules, key=lambda rule: rule.sort_key)),
        )

    def resolve(self, attributes: ConnectionAttributes) -> Resolution:
        """The policy for a connection: total, deterministic, never raises."""
        version = Version.parse_client(attributes.client_version)
        for rule in self.rules:
            if rule.admits(attributes, version):
                return Resolution(rule.policy, rule.name, self.revision)
        return Resolution(self.default, DEFAULT_RULE, self.revision)

    def rule(self, name: str) -> Rule:
        """The rule called *name*.

        Raises:
          KeyError: if there is none.
        """
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def same_content(self, other: PolicySet) -> bool:
        """Whether *other* holds the same policies, whatever its revision."""
        return self.default_overrides == other.default_overrides and self.rules == other.rules


_TOO_DEEP: Final = "not a valid TOML document: arrays or tables nested too deeply"


def load_policy_toml(text: str | bytes) -> PolicySet:
    """Parse and check a policy file (see :doc:`/reference/policy-file`).

    Raises:
      PolicyError: for a TOML syntax error or any problem in the set.
    """
    try:
        data = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyProblem("", "", f"not a valid TOML document: {exc}")]) from exc
    except RecursionError as exc:  # tomllib recurses once per level of nesting
        raise PolicyError([PolicyProblem("", "", _TOO_DEEP)]) from exc
    return PolicySet.from_mapping(data)


def policy_set_from_kv(items: Mapping[str, bytes], *, prefix: str, revision: int) -> PolicySet:
    """Build a set from the keys under an etcd prefix.

    ``PREFIX + "default"`` holds the default policy and ``PREFIX + "rules/" +
    NAME`` each rule, every value a TOML document with that table's keys.
    Any other key under the prefix is an error.

    Raises:
      PolicyError: for a bad key, a value that is not TOML, or any problem
        in the set.
    """
    problems: list[PolicyProblem] = []
    document: dict[str, Any] = {"default": {}, "rules": {}}
    for key in sorted(items):
        suffix = key[len(prefix) :] if key.startswith(prefix) else None
        if suffix == DEFAULT_RULE:
            rule, target = DEFAULT_RULE, document
        elif suffix is not None and suffix.startswith("rules/"):
            rule, target = suffix[len("rules/") :], document["rules"]
        else:
            problems.append(
                PolicyProblem(
                    "",
                    key,
                    f"unexpected key {key!r}: expected {prefix}default or {prefix}rules/NAME",
                )
            )
            continue
        try:
            table = tomllib.loads(items[key].decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            problems.append(PolicyProblem(rule, "", f"{key} is not a valid TOML document: {exc}"))
            continue
        except RecursionError:
            problems.append(PolicyProblem(rule, "", f"{key}: {_TOO_DEEP}"))
            continue
        target[rule] = table
    try:
        policy_set = PolicySet.from_mapping(document, revision=revision)
    except PolicyError as error:  # report these with the problems above
        problems.extend(error.problems)
    if problems:
        raise PolicyError(problems)
    return policy_set


# --------------------------------------------------------------------------
# Counting connections per revision


@final
class PolicyCensus:
    """Counts live connections per (revision, rule), for the metrics.

    The runner calls :meth:`add` when a connection gets its first
    :class:`Resolution`, :meth:`move` when a new set changes it, and
    :meth:`remove` when the connection ends.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[int, str], int] = {}

    def add(self, resolution: Resolution) -> None:
        """Count one more connection under *resolution*."""
        key = (resolution.revision, resolution.rule)
        self._counts[key] = self._counts.get(key, 0) + 1

    def remove(self, resolution: Resolution) -> None:
        """Count one connection fewer under *resolution*.

        Raises:
          ValueError: if no connection is counted there.
        """
        key = (resolution.revision, resolution.rule)
        count = self._counts.get(key, 0)
        if count <= 0:
            raise ValueError(f"no connection counted under revision {key[0]}, rule {key[1]!r}")
        if count == 1:
            del self._counts[key]
        else:
            self._counts[key] = count - 1

    def move(self, old: Resolution, new: Resolution) -> None:
        """Move one connection from *old* to *new*."""
        self.remove(old)
        self.add(new)

    def counts(self) -> dict[tuple[int, str], int]:
        """A snapshot: ``(revision, rule) -> connections``; zeros are left out."""
        return dict(self._counts)
