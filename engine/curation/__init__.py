"""Curation: reviewing and correcting ground truth — the one entry module the app and the CLI use.

Everything a reviewer does after the engine has *found* something (:mod:`engine.dedup` finds
near-duplicate conflicts; :mod:`engine.evaluation` finds poor predictions) lives here:

==========================  ================================================================
:mod:`.queue`               the review queue: near-duplicate **pairs** (:func:`build_queue`,
                            filters, progress, the case study's bulk rule as proposals) and
                            **cases** ranked by suspicion (:func:`case_queue`, :func:`next_case`)
:mod:`.session`             the **edit session** of one case: undo/redo (:class:`EditStack`),
                            the save with optimistic concurrency and its conflict
                            (:class:`EditSession`), saved versions (:func:`version_mask`,
                            :func:`version_history`)
:mod:`.canvas`              **canvas ops**: strokes / Fabric.js objects → label maps, zoom
                            windows (:class:`View`), polygons, the canvas background
:mod:`.masks`               **mask ops**: flood fill, hole filling, version diffs
:mod:`.manifest`            cleaned **manifests** from review decisions (:func:`build_manifest`)
:mod:`.export`              **export** of the corrected dataset (:func:`export_corrected`)
:mod:`.live`                the **corrected dataset** in memory and the **live label-noise
                            ceiling** (:func:`live_ceiling`, no rescan)
:mod:`.signals`             model signals for the case queue: model-vs-model disagreement,
                            flip-TTA uncertainty
==========================  ================================================================

The review store (decisions, mask versions, review states, audit log) is
:class:`engine.store.ReviewStore` for now; every function here takes it as an argument.
Import from this module (``from engine.curation import build_queue``), not from the submodules:
the submodule layout may change. Importing it is cheap (numpy only; no torch, no streamlit).

Example:
    >>> from engine.curation import EditSession, build_queue, export_corrected
    >>> from engine.store import ReviewStore
    >>> with ReviewStore.for_dataset(ds) as store:                             # doctest: +SKIP
    ...     queue = build_queue(load_latest_report(ds).pairs, store.decisions())
    ...     sess = EditSession.start(ds, store, queue[0].a)
    ...     sess.stack.push(fill_holes(sess.stack.current)); sess.save(store, "ana", "holes")
    ...     export_corrected(ds, store, "/tmp/corrected")
"""

from engine.curation.canvas import (
                                    ALPHA_THRESHOLD,
                                    ERASE,
                                    ERASER_COLOUR,
                                    UNTOUCHED,
                                    View,
                                    apply_layer,
                                    apply_objects,
                                    click_points,
                                    drawing_palette,
                                    hex_colour,
                                    layer_to_labels,
                                    make_view,
                                    nearest_class,
                                    parse_colour,
                                    paste_labels,
                                    path_polylines,
                                    polygon_mask,
                                    rasterise_objects,
                                    render_view,
                                    resample_to_crop,
                                    stroke_mask,
                                    window_outline,
)
from engine.curation.cleaning import MANIFEST_POLICIES, build_manifest
from engine.curation.export import (
                                    CSV_NAMES,
                                    EXPORT_FORMAT,
                                    EXPORT_VERSION,
                                    FORMAT_HELP,
                                    FORMATS,
                                    export_corrected,
                                    export_dataset,
)
from engine.curation.live import corrected_dataset, live_ceiling, touched_cases
from engine.curation.masks import DIFF_COLOURS, diff_image, fill_holes, flood_fill, mask_diff, union_masks
from engine.curation.queue import (
                                    BULK_NOTE,
                                    DECISION_HELP,
                                    DECISION_LABELS,
                                    OPEN_STATES,
                                    QUEUE_WEIGHTS,
                                    REVIEW_STATES,
                                    Proposal,
                                    QueueFilter,
                                    ReviewItem,
                                    apply_proposals,
                                    build_queue,
                                    bulk_proposals,
                                    case_queue,
                                    categories_of,
                                    confirm_proposals,
                                    current_decision,
                                    decision_state,
                                    default_manifest_path,
                                    export_summary,
                                    filter_queue,
                                    first_open,
                                    frame_order,
                                    index_of,
                                    key_text,
                                    neighbours,
                                    next_case,
                                    next_open,
                                    orphan_decisions,
                                    pair_for_case,
                                    pair_history,
                                    pair_key,
                                    parse_key,
                                    progress_counts,
                                    proposals_in_force,
                                    severity_order,
                                    subjects_of,
                                    train_command,
                                    undo_proposals,
)
from engine.curation.session import EditSession, EditStack, version_history, version_mask
from engine.curation.signals import model_disagreement, tta_uncertainty
from engine.datasets.manifest import is_product_manifest, save_manifest

__all__ = [
    # queue: pairs
    "REVIEW_STATES", "OPEN_STATES", "BULK_NOTE", "confirm_proposals", "DECISION_LABELS", "DECISION_HELP",
    "ReviewItem", "QueueFilter",
    "Proposal", "pair_key", "key_text", "parse_key", "severity_order", "current_decision", "decision_state",
    "build_queue", "filter_queue", "subjects_of", "categories_of", "orphan_decisions", "progress_counts",
    "index_of", "next_open", "first_open", "pair_for_case", "frame_order", "neighbours", "bulk_proposals",
    "apply_proposals", "proposals_in_force", "undo_proposals", "pair_history", "default_manifest_path",
    "train_command", "export_summary",
    # queue: cases
    "QUEUE_WEIGHTS", "case_queue", "next_case",
    # edit session
    "EditStack", "EditSession", "version_mask", "version_history",
    # canvas ops
    "ERASER_COLOUR", "ERASE", "UNTOUCHED", "ALPHA_THRESHOLD", "View", "make_view", "drawing_palette", "hex_colour",
    "parse_colour", "nearest_class", "layer_to_labels", "resample_to_crop", "paste_labels", "apply_layer",
    "path_polylines", "polygon_mask", "stroke_mask", "rasterise_objects", "apply_objects", "click_points",
    "render_view", "window_outline",
    # mask ops
    "DIFF_COLOURS", "flood_fill", "fill_holes", "mask_diff", "diff_image", "union_masks",
    # manifest, export
    "MANIFEST_POLICIES", "build_manifest", "save_manifest", "is_product_manifest", "export_dataset", "FORMATS",
    "FORMAT_HELP", "export_corrected",
    "EXPORT_FORMAT", "EXPORT_VERSION", "CSV_NAMES",
    # live state, model signals
    "corrected_dataset", "live_ceiling", "touched_cases", "model_disagreement", "tta_uncertainty",
]
