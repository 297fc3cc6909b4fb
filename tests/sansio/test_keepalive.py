from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioheart import ConfigError, KeepaliveConfig
from trioheart.keepalive import MAX_KEEPCNT, MAX_KEEPIDLE, MAX_USER_TIMEOUT


def test_defaults_cover_a_60_second_idle_timeout() -> None:
    config = KeepaliveConfig()
    assert config.idle < 60
    assert config.probing_time == 60
    assert config.user_timeout == config.probing_time


@given(
    idle=st.integers(1, MAX_KEEPIDLE),
    interval=st.integers(1, 32767),
    count=st.integers(1, MAX_KEEPCNT),
)
def test_valid_values_are_kept_and_user_timeout_covers_probing(
    idle: int, interval: int, count: int
) -> None:
    config = KeepaliveConfig(idle=idle, interval=interval, count=count)
    assert (config.idle, config.interval, config.count) == (idle, interval, count)
    if config.probing_time <= MAX_USER_TIMEOUT:
        assert config.user_timeout == config.probing_time
    else:
        assert config.user_timeout is None  # the kernel cannot express it: its default


BAD_SECONDS = [0, -1, math.nan, math.inf, 1.5, MAX_KEEPIDLE + 1, "5", None, True]


@pytest.mark.parametrize("field", ["idle", "interval"])
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_bad_seconds_name_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        KeepaliveConfig(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [0, -3, MAX_KEEPCNT + 1, 2.0, math.nan, True], ids=repr)
def test_bad_count(value: object) -> None:
    with pytest.raises(ConfigError, match="count"):
        KeepaliveConfig(count=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, 1e12, "60"], ids=repr)
def test_bad_user_timeout(value: object) -> None:
    with pytest.raises(ConfigError, match="user_timeout"):
        KeepaliveConfig(user_timeout=value)  # type: ignore[arg-type]


def test_user_timeout_shorter_than_probing_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"user_timeout must cover the keepalive probing.*59"):
        KeepaliveConfig(idle=30, interval=10, count=3, user_timeout=59)


def test_user_timeout_none_leaves_the_kernel_default() -> None:
    assert KeepaliveConfig(user_timeout=None).user_timeout is None


def test_enabled_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="enabled"):
        KeepaliveConfig(enabled="yes")  # type: ignore[arg-type]
