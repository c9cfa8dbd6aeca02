"""Predict: upload images (or try a demo image) and segment them with a model.

Thin page: layout in ``ui.predict_page``, work in ``ui.predict_view`` (cached decoding, per-session probability
cache, download payloads) and ``engine``. Moving the threshold / minimum-area controls only
re-post-processes the cached probabilities; the model runs once per (image, model, TTA).
"""

from ui.widgets import guard, page_setup

page_setup("Predict", "🔮", "Segment your own images — ultrasound TIFFs, chest X-ray DICOMs, PNG/JPEG — "
           "or try an image from the current dataset. Tune the threshold and minimum area live, "
           "then download the mask, the overlay or the competition RLE.")

with guard("Predict"):
    from ui.predict_page import render

    render()
