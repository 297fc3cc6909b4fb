"""Every fuzz finding, minimized, as a test that fails without its fix.

Each test feeds the minimized input through the same target check the
fuzzers use (tests/fuzz/targets.py), and where it helps, also states the
fixed behaviour directly.
"""

from __future__ import annotations

import pytest

from trioheart.backoff import RetryWindow
from trioheart.errors import ConfigError
from trioheart.policy import PolicyError, load_policy_toml, policy_set_from_kv

from . import targets


def test_deeply_nested_policy_file_is_a_policy_error() -> None:
    """Finding: tomllib recurses once per nesting level; RecursionError escaped.

    Found by the hypothesis slice of the ``policy`` target (a document with
    a 3000-deep array). A policy source must raise only PolicyError.
    """
    deep = b"revision = 1\nx = " + b"[" * 3000 + b"]" * 3000
    with pytest.raises(PolicyError, match="nested too deeply"):
        load_policy_toml(deep)
    with pytest.raises(PolicyError, match="nested too deeply"):
        policy_set_from_kv({"/p/default": b"x = " + b"[" * 3000}, prefix="/p/", revision=1)
    targets.check_policy(targets.PolicyInput(toml=deep))


def test_drain_message_with_a_huge_integer_is_ignored() -> None:
    """Finding: RetryWindow.from_message raised OverflowError for a huge integer.

    JSON integers have no size limit; ``float(10**400)`` overflows. A client
    reading a server's ``drain`` message must get ``None`` (not a window),
    never an exception. Found by the hypothesis slice of ``close_text``.
    """
    huge = int("2" * 309)
    assert RetryWindow.from_message({"type": "drain", "retry": [huge, None]}) is None
    assert RetryWindow.from_message({"type": "drain", "retry": [1, huge]}) is None
    with pytest.raises(ConfigError, match="finite number of seconds"):
        RetryWindow(earliest=0, latest=huge)
    text = '{"type": "drain", "retry": [' + str(huge) + ", null]}"
    targets.check_close_text(targets.CloseInput(code=1000, text=text))
