"""Compatibility shim: see :mod:`engine.curation.store.review`."""

from engine.curation.store.review import *  # noqa: F401,F403
from engine.curation.store.review import _canonical_pair, _check_mask, _now  # noqa: F401
