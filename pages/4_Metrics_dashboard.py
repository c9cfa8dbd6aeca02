"""Metrics dashboard: a model's evaluation on the current dataset, and training runs."""

from ui.dashboard_view import render_dashboard
from ui.widgets import guard, page_setup

page_setup("Metrics dashboard", "📊", (
    "How well a model does on the current dataset — under a stated empty-mask policy — where it fails, "
    "which post-processing suits it, how it detects presence, per DICOM slice; and how training went."))

with guard("Metrics dashboard"):
    render_dashboard()
