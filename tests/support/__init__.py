"""Helpers the test suites share (not tests themselves): :mod:`tests.support.helpers` (tiny datasets,
models, AppTest plumbing), :mod:`tests.support.badinput` and :mod:`tests.support.hostile` (bad and
hostile input corpora), :mod:`tests.support.pgserver` (a throwaway PostgreSQL server)."""
