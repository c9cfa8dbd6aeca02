"""Compatibility shim: the review store moved to :mod:`engine.curation.store`.

``from engine.store import ReviewStore, STORE_NAME, PAIR_DECISIONS, CASE_STATES, mask_digest`` keeps
working; new code imports from :mod:`engine.curation.store`.
"""

from engine.curation.store import *  # noqa: F401,F403
from engine.curation.store import __all__  # noqa: F401
