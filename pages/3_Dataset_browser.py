"""Dataset browser: filter cases, page through overlay thumbnails, open a case, EDA charts."""

from ui.browser_view import render_browser
from ui.widgets import guard, page_setup

page_setup("Dataset browser", "🗂️", (
    "Filter the cases (sidebar), page through thumbnails with the ground truth or a model's prediction, "
    "open a case for its metrics and details, and look at the data (EDA)."))

with guard("Dataset browser"):
    render_browser()
