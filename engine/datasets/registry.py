"""The layouts registry: every dataset layout by name, and detection over all of them.

The folder layouts live in :mod:`engine.datasets.layouts`, the interchange formats (COCO, DICOM-SEG,
NIfTI) in :mod:`engine.datasets.interop_layouts`; this module sits above both so neither imports the
other's registry. :func:`engine.datasets.open_dataset` picks the best :class:`Detection`.

Example:
    >>> list(LAYOUTS)
    ['kaggle_uns', 'siim', 'paired', 'coco', 'dicom_seg', 'nifti']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.datasets.interop_layouts import INTEROP_LAYOUTS
from engine.datasets.layouts import (
    DEFAULT_MASK_SUFFIXES,
    IMAGE_DIR_NAMES,
    MASK_DIR_NAMES,
    Detection,
    KaggleUNSLayout,
    PairedLayout,
    SIIMLayout,
)
from engine.datasets.scan import Stamp
from engine.io import IMAGE_SUFFIXES

#: Every layout by name, in detection order: the folder layouts, then COCO, DICOM-SEG and NIfTI.
LAYOUTS: dict[str, Any] = {
    KaggleUNSLayout.name: KaggleUNSLayout,
    SIIMLayout.name: SIIMLayout,
    PairedLayout.name: PairedLayout,
    **INTEROP_LAYOUTS,
}


def detect_all(root: Path, files: dict[Path, Stamp]) -> list[Detection]:
    """Every layout's claim on ``root``, best first."""
    found = [d for L in LAYOUTS.values() if (d := L.detect(root, files)) is not None]
    return sorted(found, key=lambda d: -d.score)


def describe_expected() -> str:
    """What detection looks for, for error messages."""
    return ("Kaggle UNS (train/{subject}_{frame}.tif + _mask.tif or train_masks.csv); "
            "SIIM (*.dcm files, optionally with an 'ImageId,EncodedPixels' CSV); "
            f"paired folders ({'/'.join(IMAGE_DIR_NAMES[:3])} + {'/'.join(MASK_DIR_NAMES[:4])} with the same "
            f"file stems, or masks named <stem>{'|'.join(DEFAULT_MASK_SUFFIXES[:4])} beside the images); "
            f"image files: {', '.join(IMAGE_SUFFIXES)}")
