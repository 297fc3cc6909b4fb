"""Helpers for testing trioheart and applications built on it.

:mod:`trioheart.testing.netns` makes throwaway network namespaces for tests
that need the kernel's own view of a dead peer.
"""

from __future__ import annotations
