"""Interactive click-to-segment: a click model of our own plus classical fallbacks, behind one session API.

Start here: :func:`start_session`. One session = one object in one image::

    from engine.assist import start_session
    s = start_session(image, method=None, mask=None)   # image (H,W) or (H,W,3), any integer dtype
    m = s.click(120, 200, True)      # (H,W) bool: the mask after a positive click at row 120, column 200
    m = s.click(180, 260, False)     # a negative click removes what is around it
    m = s.undo()                     # the mask before the last click
    m = s.box(40, 60, 300, 420)      # a box prompt (r0, c0, r1, c1), corners inclusive
    s.method, s.clicks               # 'click_model' (or a classical fallback), 2

Methods (:data:`METHODS`, :func:`list_methods`, :func:`available_methods`):

- ``click_model`` — a small U-Net (0.5 M parameters) trained here, in the spirit of RITM (Sofiiuk et al.
  2022), on data whose license allows shipping (Montgomery lungs, usgra nerves/vessels, synthetic
  shapes), with simulated clicks and iterative training on its own previous masks. Input: the view's
  image, positive/negative click disks and the previous mask at 256²; after the first click it zooms in
  on the mask and the clicks. Weights: ``weights/click-seg`` (card ``click.json``, figures from
  ``bench/assist.py`` on held-out patients). Trained and run on a CPU.
- ``grabcut``, ``random_walker``, ``watershed`` (grow from seeds) — no weights (:mod:`engine.assist.classical`).

``method=None`` uses the click model when its weights load, else the best classical method.

How the Mask editor's Smart tool should use it (the UI is not part of this package):

1. **Start** when the user picks the tool on a case: ``start_session(image, mask=start)`` with ``start``
   = None (empty: draw a new object), the case's ground truth (correct it), or a model's prediction
   (correct it) — for a label map, one class at a time: ``mask=(labels == k)``. Keep the session in
   ``st.session_state`` keyed by (case id, class, start choice); it holds the working image (1 byte per
   pixel) and bit-packed masks, never a network (the click model is loaded once per process and shared),
   so it is cheap to keep and to pickle. Start a new session when the case, class or start changes.
2. **Click**: canvas x is the column, y the row (scale canvas coordinates to image pixels first).
   Left click → ``s.click(row, col, True)``, right click / "remove" mode → ``s.click(row, col, False)``;
   show the returned mask as an overlay; ``s.last_seconds`` says how long it took.
3. **Undo** → ``s.undo()``; **Reset** → ``s.reset()`` (back to the start mask).
4. **Accept**: merge the mask into the label map (``labels[m] = k``; where the start was the ground truth,
   also ``labels[(labels == k) & ~m] = 0``) and save it as a **new mask version** (the original ground
   truth is never overwritten), with ``s.note()`` in the version's note: it records the method
   (``click_model``/``grabcut``/...), the weights, the number of clicks (positive / negative), whether a
   box was used and what the session started from.

The simulated-click protocol used for training and the NoC benchmark is :func:`next_click` /
:func:`run_protocol` (:mod:`engine.assist.clicks`). Importing this package does not import torch; the
click model loads it on first use.
"""

from engine.assist.clicks import MAX_CLICKS, Click, iou, iou_after, next_click, noc, run_protocol
from engine.assist.session import (
    CLASSICAL_ORDER,
    CLICK_MODEL,
    METHODS,
    AssistSession,
    MethodInfo,
    available_methods,
    default_method,
    list_methods,
    start_session,
)

__all__ = [
    "CLASSICAL_ORDER", "CLICK_MODEL", "MAX_CLICKS", "METHODS", "AssistSession", "Click", "MethodInfo",
    "available_methods", "default_method", "iou", "iou_after", "list_methods", "next_click", "noc",
    "run_protocol", "start_session",
]
