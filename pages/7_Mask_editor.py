"""Mask editor: correct a case's mask by hand and save it as a new version (never overwriting)."""

from ui.editor_view import render_editor
from ui.widgets import guard, page_setup

page_setup("Mask editor", "✏️", (
    "Correct ground-truth masks: brush, eraser, polygon and fill per class on a zoomable canvas, with undo/redo. "
    "Saving adds a version (author, time, note) — the original stays; see the history, diffs and revert, "
    "set the review state, work through the cases most in need of review, and export the corrected dataset."))

with guard("Mask editor"):
    render_editor()
