"""How-to: check a policy file before you publish it, and see who a rule takes.

Run it as ``python gray_release_check.py policy.toml``.
"""

from __future__ import annotations

import pathlib
import sys
from collections import Counter

from trioheart.policy import ConnectionAttributes, PolicyError, load_policy_toml


def check(path: str) -> Counter[str]:
    """Validate the file at *path*; return the rule each of 10,000 desktop users gets."""
    try:
        policy_set = load_policy_toml(pathlib.Path(path).read_bytes())
    except PolicyError as error:
        print(error)  # one problem per line, each naming the rule and the key
        raise SystemExit(1) from None
    return Counter(
        policy_set.resolve(ConnectionAttributes(key=f"user-{i}", group="desktop")).rule
        for i in range(10_000)
    )


if __name__ == "__main__":
    print(dict(check(sys.argv[1] if len(sys.argv) > 1 else "policy.toml")))
    # {'desktop': 9900, 'desktop-fast-ping': 100}, or close to it
