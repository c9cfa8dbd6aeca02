"""Correction loop: retrain a model on the corrected dataset and see what moved."""

from ui.loop_view import render_loop_page
from ui.widgets import guard, page_setup

page_setup("Correction loop", "🔁", (
    "The product's loop: the corrections made so far (decisions, corrected masks), retrain a model on them with "
    "the same held-out cases, then see what moved — before/after on the old and the corrected ground truth, "
    "with the cases that moved most."))

with guard("Correction loop"):
    render_loop_page()
