"""Train: configure a training run, start it in the background, follow it live, use the model."""

from ui.train_view import render_train
from ui.widgets import guard, page_setup

page_setup("Train", "🏋️", (
    "Train a segmentation model on the current dataset, a cleaned manifest or any folder. The run goes on in "
    "a separate process (leave the page, reload, come back); follow its loss and Dice curves and the "
    "predictions epoch by epoch; the finished model appears in every model picker."))

with guard("Train"):
    render_train()
