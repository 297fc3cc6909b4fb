"""Benchmarks: runnable programs that measure trioheart against its peers."""
