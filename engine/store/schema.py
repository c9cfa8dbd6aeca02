"""Compatibility shim: see :mod:`engine.curation.store.schema`."""

from engine.curation.store.schema import MIGRATIONS, SCHEMA_VERSION  # noqa: F401
