"""Policy resolution and validation: properties first, then the edges."""

from __future__ import annotations

import contextlib
import math
import pathlib
import random
from typing import Any

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trioheart import ConnectionConfig, DetectorConfig, KeepaliveConfig
from trioheart.errors import ConfigError
from trioheart.policy import (
    DEFAULT_RULE,
    ConnectionAttributes,
    PolicyCensus,
    PolicyError,
    PolicySet,
    Resolution,
    ResolvedPolicy,
    Version,
    VersionRange,
    load_policy_toml,
    policy_set_from_kv,
    rollout_bucket,
)

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"

GROUPS = ["mobile", "desktop", "web"]
REGIONS = ["eu", "us", "ap"]
CLIENT_VERSIONS = ["1.0.0", "1.9.3", "2.0.0-rc.1", "2.0.0", "2.3.1", "3.0.0", "v2.4", "junk", ""]
RANGES = ["<2", ">=2.3.0,<3", "^1.2", "~2.0", "2.x", "*", "^2 || <1.5", "=2.0.0"]

# --------------------------------------------------------------------------
# Strategies


def _names(values: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(values), st.lists(st.sampled_from(values), min_size=1))


match_tables = st.fixed_dictionaries(
    {},
    optional={
        "group": _names(GROUPS),
        "region": _names(REGIONS),
        "version": st.sampled_from(RANGES),
    },
)
rule_tables = st.fixed_dictionaries(
    {"match": match_tables},
    optional={
        "rollout_percent": st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False)),
        "priority": st.integers(-2, 2),
        "ping_interval": st.floats(1, 25),
        "max_window": st.floats(1, 60),
        "app_heartbeat": st.booleans(),
    },
)
rule_sets = st.dictionaries(
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,6}", fullmatch=True).filter(
        lambda name: name not in ("default", "defaults")
    ),
    rule_tables,
    max_size=8,
)
connections = st.builds(
    ConnectionAttributes,
    key=st.text(max_size=20),
    group=st.one_of(st.none(), st.sampled_from([*GROUPS, "other"])),
    region=st.one_of(st.none(), st.sampled_from([*REGIONS, "other"])),
    client_version=st.one_of(st.none(), st.sampled_from(CLIENT_VERSIONS), st.text(max_size=12)),
)


def _policy_set(rules: dict[str, Any], revision: int = 1) -> PolicySet:
    return PolicySet.from_mapping({"revision": revision, "default": {}, "rules": rules})


# --------------------------------------------------------------------------
# Resolution


@given(rules=rule_sets, connection=connections, seed=st.randoms(use_true_random=False))
def test_resolution_is_total_deterministic_and_order_free(
    rules: dict[str, Any], connection: ConnectionAttributes, seed: random.Random
) -> None:
    policy_set = _policy_set(rules)
    resolution = policy_set.resolve(connection)
    assert resolution.rule in {*rules, DEFAULT_RULE}
    assert resolution.revision == 1
    assert policy_set.resolve(connection) == resolution
    # The order rules are written in does not matter.
    shuffled = list(rules.items())
    seed.shuffle(shuffled)
    assert _policy_set(dict(shuffled)).resolve(connection) == resolution
    # Every resolved policy converts to the detector's bounds and the L4 settings.
    assert isinstance(resolution.policy.detector_config(), DetectorConfig)
    assert isinstance(resolution.policy.keepalive_config(), KeepaliveConfig)
    assert resolution.policy.connection_config().heartbeat == resolution.policy.detector_config()


@given(rules=rule_sets, connection=connections)
def test_the_most_specific_admitting_rule_wins(
    rules: dict[str, Any], connection: ConnectionAttributes
) -> None:
    policy_set = _policy_set(rules)
    resolution = policy_set.resolve(connection)
    version = Version.parse_client(connection.client_version)
    admitting = [rule for rule in policy_set.rules if rule.admits(connection, version)]
    if resolution.rule == DEFAULT_RULE:
        assert admitting == []
        assert resolution.policy == policy_set.default
        return
    chosen = policy_set.rule(resolution.rule)
    assert chosen in admitting
    assert resolution.policy == chosen.policy
    # version > region > group, then name: no admitting rule ranks above it.
    assert all(chosen.sort_key <= rule.sort_key for rule in admitting)
    if chosen.match.version is None:
        assert not any(rule.match.version is not None for rule in admitting)


@given(
    rules=rule_sets,
    connection=connections,
    percents=st.lists(st.floats(0, 100), min_size=2, max_size=2).map(sorted),
    data=st.data(),
)
def test_raising_the_rollout_never_moves_a_client_out(
    rules: dict[str, Any],
    connection: ConnectionAttributes,
    percents: list[float],
    data: st.DataObject,
) -> None:
    assume(rules)
    name = data.draw(st.sampled_from(sorted(rules)))
    low, high = percents
    before = _policy_set({**rules, name: {**rules[name], "rollout_percent": low}})
    after = _policy_set({**rules, name: {**rules[name], "rollout_percent": high}})
    if before.resolve(connection).rule == name:
        assert after.resolve(connection).rule == name
    # And a client that moves at all moves into this rule, nowhere else.
    if before.resolve(connection) != after.resolve(connection):
        assert after.resolve(connection).rule == name


@given(key=st.text(), salt=st.text(min_size=1))
def test_rollout_bucket_is_in_range_and_stable(key: str, salt: str) -> None:
    bucket = rollout_bucket(key, salt)
    assert 0 <= bucket < 100
    assert rollout_bucket(key, salt) == bucket
    assert round(bucket * 100) == pytest.approx(bucket * 100)  # resolution 0.01


def test_rollout_bucket_is_pinned() -> None:
    # Every process, release and machine must agree; if this changes, every
    # gray release in flight would reshuffle its cohort.
    assert [rollout_bucket(f"user-{i}", "r") for i in range(3)] == [23.15, 27.73, 55.0]
    assert rollout_bucket("", "x") == 64.71
    assert rollout_bucket("é", "salt") == 75.97


def test_rollout_admits_about_its_share_and_salt_reshuffles() -> None:
    policy_set = _policy_set({"gray": {"match": {}, "rollout_percent": 25, "ping_interval": 5}})
    keys = [f"device-{i}" for i in range(4000)]
    chosen = {
        key for key in keys if policy_set.resolve(ConnectionAttributes(key=key)).rule == "gray"
    }
    # Binomial(4000, 0.25): sd ~ 27; allow 5 sd.
    assert abs(len(chosen) - 1000) < 140
    salted = _policy_set(
        {"gray": {"match": {}, "rollout_percent": 25, "rollout_salt": "other", "ping_interval": 5}}
    )
    chosen_salted = {
        key for key in keys if salted.resolve(ConnectionAttributes(key=key)).rule == "gray"
    }
    # An independent cohort overlaps by about a quarter of it.
    assert abs(len(chosen & chosen_salted) - 250) < 100


def test_rollout_zero_admits_nobody_and_hundred_admits_every_match() -> None:
    keys = [ConnectionAttributes(key=f"k{i}", group="mobile") for i in range(300)]
    none = _policy_set({"r": {"match": {"group": "mobile"}, "rollout_percent": 0}})
    every = _policy_set({"r": {"match": {"group": "mobile"}, "rollout_percent": 100}})
    assert {none.resolve(key).rule for key in keys} == {DEFAULT_RULE}
    assert {every.resolve(key).rule for key in keys} == {"r"}


def test_precedence_version_over_region_over_group_then_name() -> None:
    policy_set = _policy_set(
        {
            "by-group": {"match": {"group": "mobile"}, "ping_interval": 11},
            "by-region": {"match": {"region": "eu"}, "ping_interval": 12},
            "by-group-region": {"match": {"group": "mobile", "region": "eu"}, "ping_interval": 13},
            "by-version": {"match": {"version": "<2"}, "ping_interval": 14},
            "b-tie": {"match": {"group": "desktop"}, "ping_interval": 15},
            "a-tie": {"match": {"group": ["desktop", "web"]}, "ping_interval": 16},
            "z-tie": {"match": {"group": "web"}, "priority": 1, "ping_interval": 17},
            "version-low": {"match": {"version": "1.x"}, "priority": -5, "ping_interval": 18},
        }
    )

    def rule(**kwargs: str) -> str:
        return policy_set.resolve(ConnectionAttributes(key="k", **kwargs)).rule

    assert rule(group="mobile", region="eu", client_version="1.0") == "by-version"
    assert rule(group="mobile", region="eu", client_version="2.0") == "by-group-region"
    assert rule(group="web", region="eu") == "by-region"
    assert rule(group="mobile", region="us") == "by-group"
    assert rule(group="desktop") == "a-tie"  # same rank, same priority: the smaller name
    assert rule(group="web") == "z-tie"  # same rank: the higher priority
    assert rule(group="web", client_version="1.2") == "by-version"  # rank beats priority
    assert rule(group="other", client_version="not a version") == DEFAULT_RULE
    resolution = policy_set.resolve(ConnectionAttributes(key="k", group="mobile"))
    assert resolution == Resolution(policy_set.rule("by-group").policy, "by-group", 1)
    assert resolution.policy.ping_interval == 11.0
    assert resolution.policy.min_interval == 11.0  # follows the layered interval


def test_a_rule_layers_over_the_default_policy() -> None:
    policy_set = PolicySet.from_mapping(
        {
            "revision": 9,
            "default": {"ping_interval": 20, "max_window": 30, "idle_timeout": 60},
            "rules": {"fast": {"match": {"group": "mobile"}, "ping_interval": 10}},
        }
    )
    policy = policy_set.rule("fast").policy
    assert (policy.ping_interval, policy.max_window, policy.idle_timeout) == (10.0, 30.0, 60.0)
    assert isinstance(policy.ping_interval, float)
    config = policy.detector_config()
    assert (config.ping_interval, config.ping_timeout, config.idle_timeout) == (10.0, 30.0, 60.0)
    # The defaults are KeepaliveConfig's: the user timeout follows the probing.
    assert policy_set.default.keepalive_config() == KeepaliveConfig()
    assert policy_set.default.tcp_user_timeout == KeepaliveConfig().user_timeout == 60.0
    base = ConnectionConfig(handshake_timeout=3.0)
    config = policy.connection_config(base)
    assert (config.heartbeat, config.keepalive) == (
        policy.detector_config(),
        policy.keepalive_config(),
    )
    assert config.handshake_timeout == 3.0
    assert config.app_heartbeat_interval is None


def test_l4_settings_follow_the_policy() -> None:
    policy = ResolvedPolicy(keepalive_idle=5, keepalive_interval=2, keepalive_count=2)
    assert policy.tcp_user_timeout == 9.0  # follows the probing
    assert policy.keepalive_config() == KeepaliveConfig(idle=5, interval=2, count=2)
    kernel_default = ResolvedPolicy(tcp_user_timeout=0)
    assert kernel_default.keepalive_config().user_timeout is None
    off = ResolvedPolicy(keepalive=False, tcp_user_timeout=1)  # not used, so not checked
    assert off.keepalive_config() == KeepaliveConfig(enabled=False)
    beating = ResolvedPolicy(app_heartbeat=True, app_heartbeat_interval=7)
    assert beating.connection_config().app_heartbeat_interval == 7
    whole = PolicySet.from_mapping({"revision": 1, "default": {"keepalive_idle": 20.0}})
    assert type(whole.default.keepalive_idle) is int
    with pytest.raises(PolicyError, match="keepalive_idle must be a whole number of seconds"):
        PolicySet.from_mapping({"revision": 1, "default": {"keepalive_idle": 2.5}})


# --------------------------------------------------------------------------
# Validation

number_fields = [
    "ping_interval",
    "min_interval",
    "max_interval",
    "min_window",
    "max_window",
    "app_heartbeat_interval",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "tcp_user_timeout",
    "idle_timeout",
    "resume_max_messages",
    "resume_max_bytes",
    "resume_max_age",
]
bad_numbers = st.sampled_from(
    [math.nan, math.inf, -math.inf, -1, 0, -0.5, True, "20", [1], {"a": 1}, 10**400]
)


@given(
    rules=rule_sets.filter(bool),
    field=st.sampled_from(number_fields),
    value=bad_numbers,
    data=st.data(),
)
def test_a_bad_value_rejects_the_whole_set_naming_rule_and_field(
    rules: dict[str, Any], field: str, value: object, data: st.DataObject
) -> None:
    assume(not (field == "tcp_user_timeout" and value == 0))  # 0: the kernel's default
    name = data.draw(st.sampled_from(sorted(rules)))
    broken = {**rules, name: {**rules[name], field: value}}
    with pytest.raises(PolicyError) as caught:
        _policy_set(broken)
    problems = caught.value.problems
    assert any(p.rule == name and p.field == field for p in problems), problems
    assert all(p.rule == name for p in problems)  # the other rules are fine
    assert f"rule {name!r}: {field}" in str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert isinstance(caught.value, ValueError)


@given(field=st.sampled_from(number_fields), value=bad_numbers)
def test_a_bad_default_value_is_reported_on_the_default_policy(field: str, value: object) -> None:
    assume(not (field == "tcp_user_timeout" and value == 0))  # 0: the kernel's default
    with pytest.raises(PolicyError) as caught:
        PolicySet.from_mapping({"revision": 1, "default": {field: value}})
    assert [(p.rule, p.field) for p in caught.value.problems] == [(DEFAULT_RULE, field)]
    assert str(caught.value).startswith(f"default policy: {field} must be")


seconds = st.floats(0.5, 200)


@settings(max_examples=300)
@given(
    ping=seconds,
    low=seconds,
    high=seconds,
    min_window=seconds,
    max_window=seconds,
    idle=st.one_of(st.none(), seconds),
    keepalive=st.booleans(),
    ka_idle=st.integers(1, 100),
    ka_interval=st.integers(1, 30),
    ka_count=st.integers(1, 10),
    user_timeout=st.one_of(st.none(), seconds),
)
def test_cross_field_checks_accept_exactly_the_sensible_policies(
    ping: float,
    low: float,
    high: float,
    min_window: float,
    max_window: float,
    idle: float | None,
    keepalive: bool,
    ka_idle: int,
    ka_interval: int,
    ka_count: int,
    user_timeout: float | None,
) -> None:
    table: dict[str, Any] = {
        "ping_interval": ping,
        "min_interval": low,
        "max_interval": high,
        "min_window": min_window,
        "max_window": max_window,
        "keepalive": keepalive,
        "keepalive_idle": ka_idle,
        "keepalive_interval": ka_interval,
        "keepalive_count": ka_count,
    }
    if idle is not None:
        table["idle_timeout"] = idle
    if user_timeout is not None:
        table["tcp_user_timeout"] = user_timeout
    probing = ka_idle + ka_interval * ka_count
    expected = set()
    if not low <= ping <= high:
        expected.add("ping_interval")
    if min_window > max_window:
        expected.add("min_window")
    if idle is not None and high > idle / 2:
        expected.add("max_interval")
    if idle is not None and keepalive and probing > idle:
        expected.add("keepalive_idle")
    if keepalive and user_timeout is not None and user_timeout < probing:  # 0 is not drawn
        expected.add("tcp_user_timeout")
    document = {"revision": 1, "rules": {"r": {"match": {"group": "g"}, **table}}}
    if not expected:
        policy = PolicySet.from_mapping(document).rule("r").policy
        assert policy == ResolvedPolicy(**table)  # the constructor agrees
        config = policy.detector_config()  # and so does the detector
        assert config.max_interval == high
        assert policy.keepalive_config().enabled is keepalive  # and KeepaliveConfig
        return
    with pytest.raises(PolicyError) as caught:
        PolicySet.from_mapping(document)
    assert {p.field for p in caught.value.problems} == expected
    assert {p.rule for p in caught.value.problems} == {"r"}
    with pytest.raises(ConfigError):
        ResolvedPolicy(**table)


@given(
    document=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(
                st.sampled_from(
                    [
                        "revision",
                        "default",
                        "rules",
                        "match",
                        "group",
                        "version",
                        "x",
                        "ping_interval",
                        "rollout_percent",
                        "r1",
                        "default",
                    ]
                ),
                children,
                max_size=4,
            ),
        ),
        max_leaves=12,
    )
)
def test_any_document_gives_a_set_or_a_policy_error(document: object) -> None:
    problems: tuple[object, ...] = ()
    try:
        policy_set = PolicySet.from_mapping(document)  # type: ignore[arg-type]
    except PolicyError as exc:
        problems = exc.problems
    else:
        assert policy_set.revision >= 1
        return
    assert problems
    assert all(str(problem) for problem in problems)


def test_unknown_keys_are_named_with_a_suggestion() -> None:
    with pytest.raises(PolicyError) as caught:
        PolicySet.from_mapping(
            {
                "revision": 2,
                "defualt": {},
                "default": {"ping_intervall": 5},
                "rules": {"r": {"match": {"regoin": "eu"}, "rollout": 5}},
            }
        )
    messages = [str(problem) for problem in caught.value.problems]
    assert "unknown key defualt (did you mean 'default'?)" in messages
    assert "default policy: unknown key ping_intervall (did you mean 'ping_interval'?)" in messages
    # The rules are not checked against a broken default policy.
    assert len(messages) == 2


def test_rule_level_problems_are_each_named() -> None:
    with pytest.raises(PolicyError) as caught:
        PolicySet.from_mapping(
            {
                "revision": 2,
                "rules": {
                    "r": {
                        "match": {"regoin": "eu", "group": [], "version": ">=3,<2"},
                        "rollout_percent": 120,
                        "rollout_salt": "",
                        "priority": 1.5,
                        "description": 3,
                    },
                    "default": {},
                    "bad name": {},
                    "t": 5,
                },
            }
        )
    got = {(p.rule, p.field) for p in caught.value.problems}
    assert got == {
        ("r", "match.regoin"),
        ("r", "match.group"),
        ("r", "match.version"),
        ("r", "rollout_percent"),
        ("r", "rollout_salt"),
        ("r", "priority"),
        ("r", "description"),
        ("default", ""),
        ("bad name", ""),
        ("t", ""),
    }


@pytest.mark.parametrize(
    ("revision", "ok"),
    [(1, True), (0, False), (-3, False), (True, False), ("7", False), (None, False)],
)
def test_revision_must_be_a_positive_integer(revision: object, ok: bool) -> None:
    document: dict[str, object] = {} if revision is None else {"revision": revision}
    if ok:
        assert PolicySet.from_mapping(document).revision == revision
    else:
        with pytest.raises(PolicyError, match="revision must be a whole number >= 1"):
            PolicySet.from_mapping(document)


def test_too_many_rules_are_rejected() -> None:
    rules = {f"r{i}": {"match": {"group": "g"}} for i in range(1001)}
    with pytest.raises(PolicyError, match="at most 1000 rules"):
        _policy_set(rules)


def test_same_content_ignores_the_revision() -> None:
    rules = {"r": {"match": {"group": "g"}, "ping_interval": 5}}
    assert _policy_set(rules, 1).same_content(_policy_set(rules, 2))
    assert not _policy_set(rules, 1).same_content(PolicySet.builtin())
    assert PolicySet.builtin().revision == 0
    assert PolicySet.builtin().same_content(PolicySet.from_mapping({"revision": 4}))


# --------------------------------------------------------------------------
# Files and etcd keys


def test_the_documented_example_file_loads() -> None:
    text = (DOCS / "reference" / "policy-example.toml").read_text()
    policy_set = load_policy_toml(text)
    assert policy_set.revision >= 1
    assert len(policy_set.rules) >= 3
    for rule in policy_set.rules:
        rule.policy.detector_config()
    # The example's own claims, as the reference page states them.
    mobile = policy_set.resolve(
        ConnectionAttributes(key="u", group="mobile", region="ap-south", client_version="2.4.0")
    )
    assert mobile.rule == "mobile-carrier-nat"
    assert mobile.policy.max_interval <= 30 / 2
    old = ConnectionAttributes(key="u", group="mobile", region="ap-south", client_version="1.9")
    assert policy_set.resolve(old).rule == "old-app"  # version beats group and region
    desktop = [
        policy_set.resolve(ConnectionAttributes(key=f"user-{i}", group="desktop")).rule
        for i in range(2000)
    ]
    assert set(desktop) == {"desktop", "desktop-fast-ping"}
    assert 50 < desktop.count("desktop-fast-ping") < 150  # about 5 % of 2000
    keys = {key for rule in policy_set.rules for key, _ in rule.overrides}
    keys |= {key for key, _ in policy_set.default_overrides}
    assert keys == set(attrs.fields_dict(ResolvedPolicy))  # every policy key is shown


def test_a_toml_syntax_error_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="not a valid TOML document"):
        load_policy_toml("revision = \n")
    with pytest.raises(PolicyError, match="not a valid TOML document"):
        load_policy_toml(b"\xff\xfe")


def test_kv_layout_builds_the_same_set_as_a_file() -> None:
    prefix = "/trioheart/policy/"
    items = {
        prefix + "default": b"ping_interval = 20\nidle_timeout = 60\n",
        prefix + "rules/mobile": b'ping_interval = 10\n[match]\ngroup = "mobile"\n',
    }
    from_kv = policy_set_from_kv(items, prefix=prefix, revision=42)
    from_file = load_policy_toml(
        "revision = 42\n[default]\nping_interval = 20\nidle_timeout = 60\n"
        '[rules.mobile]\nping_interval = 10\nmatch = { group = "mobile" }\n'
    )
    assert from_kv == from_file
    assert from_kv.revision == 42


def test_kv_layout_rejects_strays_and_bad_values() -> None:
    prefix = "/p/"
    with pytest.raises(PolicyError) as caught:
        policy_set_from_kv(
            {"/p/other": b"", "/p/rules/x": b"ping_interval = ", "/p/default": b"revision = 3"},
            prefix=prefix,
            revision=5,
        )
    got = {(p.rule, p.field) for p in caught.value.problems}
    assert got == {("", "/p/other"), ("x", ""), ("default", "revision")}
    with pytest.raises(PolicyError, match="default policy: unknown key revision"):
        policy_set_from_kv({"/p/default": b"revision = 3"}, prefix=prefix, revision=5)
    with pytest.raises(PolicyError, match="revision is set by this source"):
        PolicySet.from_mapping({"revision": 3}, revision=5)


# --------------------------------------------------------------------------
# Versions and ranges

SEMVER_ORDER = [
    "1.0.0-0",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "2.0.0",
]


def test_precedence_follows_the_semver_spec() -> None:
    versions = [Version.parse(text) for text in SEMVER_ORDER]
    keys = [version.precedence for version in versions]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert Version.parse("1.0.0+a").precedence == Version.parse("1.0.0+b").precedence


versions = st.builds(
    Version,
    st.integers(0, 4),
    st.integers(0, 4),
    st.integers(0, 4),
    st.lists(st.one_of(st.integers(0, 3), st.sampled_from(["alpha", "rc", "x-1"])), max_size=2).map(
        tuple
    ),
)


@given(version=versions)
def test_a_version_round_trips_through_text(version: Version) -> None:
    assert Version.parse(str(version)) == version
    assert Version.parse_client(str(version)) == version
    assert Version.parse_client("v" + str(version)) == version


@given(version=versions, bound=versions, op=st.sampled_from([">=", ">", "<", "<=", "="]))
def test_full_version_comparators_follow_precedence(
    version: Version, bound: Version, op: str
) -> None:
    got = VersionRange.parse(f"{op}{bound}").contains(version)
    a, b = version.precedence, bound.precedence
    want = {">=": a >= b, ">": a > b, "<": a < b, "<=": a <= b, "=": a == b}[op]
    assert got == want


@given(version=versions, major=st.integers(0, 4), minor=st.integers(0, 4))
def test_partial_versions_split_versions_into_blocks(
    version: Version, major: int, minor: int
) -> None:
    def has(text: str) -> bool:
        return VersionRange.parse(text).contains(version)

    for partial in (f"{major}", f"{major}.{minor}"):
        assert has(f"<{partial}") != has(f">={partial}")
        assert has(f"<={partial}") != has(f">{partial}")
        assert has(partial) == (has(f">={partial}") and has(f"<={partial}"))
    in_major = version.major == major
    assert has(f"{major}.x") == in_major == has(f"~{major}") == has(f"{major}.*")
    assert (
        has(f"{major}.{minor}.x")
        == (in_major and version.minor == minor)
        == has(f"~{major}.{minor}")
    )
    if major > 0:
        assert has(f"^{major}") == in_major
    assert has("*")


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        (">=2.3.0,<3", ["2.3.0", "2.99.1"], ["2.2.9", "2.3.0-beta", "3.0.0-rc.1", "3.0.0"]),
        ("^1.2", ["1.2.0-alpha", "1.2.0", "1.9.9"], ["1.1.9", "2.0.0-0", "2.0.0"]),
        ("^1.2.3", ["1.2.3", "1.99.0"], ["1.2.3-rc", "1.2.2", "2.0.0-rc"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2"]),
        ("~1.4", ["1.4.0-rc", "1.4.0", "1.4.9"], ["1.5.0", "1.3.9"]),
        ("~1.4.2", ["1.4.2", "1.4.9"], ["1.4.1", "1.5.0-0"]),
        ("1.x", ["1.0.0", "1.9.9", "1.0.0-rc"], ["2.0.0-0", "0.9.9"]),
        ("1.2.3", ["1.2.3", "1.2.3+build"], ["1.2.4", "1.2.3-rc"]),
        ("^1.2 || ~0.9", ["0.9.5", "1.3.0"], ["0.10.0", "2.0.0"]),
        (" >=2 , <2.5 ", ["2.4.9"], ["2.5.0"]),
    ],
)
def test_range_examples(text: str, inside: list[str], outside: list[str]) -> None:
    version_range = VersionRange.parse(text)
    assert [v for v in inside if not version_range.contains(Version.parse(v))] == []
    assert [v for v in outside if version_range.contains(Version.parse(v))] == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty comparator"),
        (">=2.3.0 <3", "separate comparators with ','"),
        (">= 2.3", "write an operator and its version together"),
        ("^1.x", "wildcard"),
        (">=*", "wildcard"),
        (">=3,<2", "admits no version"),
        ("01.2", "expected [OP]VERSION"),
        ("1.2.3+build", "build metadata"),
        ("x.1", "expected"),
        ("1.x.3", "expected"),
        ("1.2.x.x", "expected"),
        (">>1", "expected"),
        ("1.2.3.4", "expected"),
        ("^", "expected"),
        ("1 ||", "empty comparator"),
        ("v1.2.3", "expected"),
        ("١.٢.٣", "expected"),  # non-ASCII digits
    ],
)
def test_bad_ranges_say_why(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match="version range") as caught:
        VersionRange.parse(text)
    assert why in str(caught.value)


@given(text=st.text(max_size=30))
def test_range_parser_raises_only_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        assert isinstance(VersionRange.parse(text), VersionRange)


@given(text=st.text(max_size=200))
def test_client_versions_never_raise(text: str) -> None:
    version = Version.parse_client(text)
    assert version is None or isinstance(version, Version)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2.3", "2.3.0"),
        ("v2", "2.0.0"),
        ("2.3.1-rc.1+7", "2.3.1-rc.1+7"),
        ("02.3", None),
        ("2.3.1.4", None),
        ("", None),
        ("1." + "1" * 200, None),
    ],
)
def test_client_version_leniencies(text: str, want: str | None) -> None:
    got = Version.parse_client(text)
    assert (None if got is None else str(got)) == want


# --------------------------------------------------------------------------
# The census


def test_census_counts_connections_per_revision_and_rule() -> None:
    census = PolicyCensus()
    old = Resolution(ResolvedPolicy(), "default", 1)
    new = Resolution(ResolvedPolicy(ping_interval=5), "fast", 2)
    census.add(old)
    census.add(old)
    census.move(old, new)
    assert census.counts() == {(1, "default"): 1, (2, "fast"): 1}
    census.remove(old)
    assert census.counts() == {(2, "fast"): 1}
    with pytest.raises(ValueError, match="no connection counted"):
        census.remove(old)
