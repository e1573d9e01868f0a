# cython: language_level=3
"""Placeholder: the wire protocol parser is being written (see sorter/wire.py)."""
