"""Fuzzing trioheart: in-process targets (atheris and hypothesis) and a network fuzz.

See docs/howto/fuzzing.rst for how to run them and what they check.
"""
