"""Conflict review: near-duplicate images with contradictory masks, decided pair by pair."""

from ui.review_view import render_review
from ui.widgets import guard, page_setup

page_setup("Conflict review", "⚖️", (
    "Near-identical images whose masks contradict each other, most severe first: decide each pair "
    "(keys 1–8, N/P to move, U to undo), apply the case study's rule as a proposal, see the label-noise "
    "ceiling and fold leakage, and export a cleaned manifest for training."))

with guard("Conflict review"):
    render_review()
