"""Tests of the ``engine`` package (and of the bench scripts and shipped weights that use it)."""
