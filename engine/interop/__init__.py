"""Standard exchange formats: DICOM-SEG (highdicom), COCO RLE (pycocotools), NIfTI (nibabel).

Codecs only: exporting the corrected dataset in these formats is :func:`engine.curation.export_dataset`.

- :mod:`engine.interop.dicom_seg`, :mod:`engine.interop.coco`, :mod:`engine.interop.nifti` hold the
  writers and readers; the dataset layouts that import these formats back live in
  :mod:`engine.datasets.interop_layouts`.

This package import stays cheap: the format libraries load only when a format is used.
"""
