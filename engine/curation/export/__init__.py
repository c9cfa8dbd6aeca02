"""Export of the corrected dataset: the one entry point, :func:`export_dataset`.

- ``png`` (the workbench's own): label PNGs, an RLE CSV in the dataset's convention and a manifest
  that training opens (:mod:`engine.curation.export.png`, also callable as :func:`export_corrected`).
- ``dicom-seg``, ``coco``, ``nifti``: the same masks, chosen the same way, written through the codecs
  of :mod:`engine.interop` (:mod:`engine.curation.export.formats`).

The CLI (``export-corrected --format``), the Mask editor's export and the retrain loop all come here.

Example:
    >>> from engine.curation.export import FORMATS, export_dataset
    >>> FORMATS
    ('png', 'dicom-seg', 'coco', 'nifti')
    >>> info = export_dataset(ds, store, "/tmp/out", "coco", author="alice")      # doctest: +SKIP
"""

from engine.curation.export.formats import FORMAT_HELP, FORMATS, export_dataset
from engine.curation.export.png import (
                                        CSV_NAMES,
                                        EXPORT_FORMAT,
                                        EXPORT_VERSION,
                                        INFO_NAME,
                                        MANIFEST_NAME,
                                        export_corrected,
                                        is_our_export,
)

__all__ = ["export_dataset", "FORMATS", "FORMAT_HELP", "export_corrected", "is_our_export", "CSV_NAMES",
           "EXPORT_FORMAT", "EXPORT_VERSION", "INFO_NAME", "MANIFEST_NAME"]
