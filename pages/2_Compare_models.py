"""Compare models: two or three models on the same images, side by side.

*One image*: a case of the current dataset or an upload — overlays of each model and the ground
truth, a disagreement map with pixel counts, inter-model Dice and Dice vs ground truth.
*Over the dataset*: evaluations per model (cached on disk, reused from the Metrics dashboard
when they cover the cases), a table sorted by disagreement, each row opening the side-by-side
view. The numbers come from ``engine.compare``; the layout lives in ``ui.compare_page``.
"""

from ui.widgets import guard, page_setup

page_setup("Compare models", "⚖️", "Run two or three models on the same images: where do they agree, "
           "where do they differ, and which one matches the ground truth?")

with guard("Compare models"):
    from ui.compare_page import render

    render()
