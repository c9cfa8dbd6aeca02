"""NIfTI-1 label maps (``nibabel``): one ``.nii.gz`` per 2D case, plus a labels JSON and a Slicer colour table.

Axis convention (the one ITK, SimpleITK, MONAI's image readers and 3D Slicer use for 2D
images): the data array has shape ``(W, H, 1)``: first axis = image column (x), second = image
row (y), ``data[x, y, 0] == mask[y, x]``. The affine is ``diag(-sx, -sy, 1, 1)`` (ITK's LPS
identity direction expressed in NIfTI's RAS), so in Slicer's axial (red) view columns run left
to right and rows top to bottom: the mask shows the right way round, on top of the same image
loaded through ITK. ``sx``/``sy`` are the pixel spacing in mm when the source DICOM gives one
(PixelSpacing = [row, column] spacing), else 1. The intent code is ``NIFTI_INTENT_LABEL`` and
the dtype uint8 (uint16 beyond 255 classes); ``labels.json`` names the class ids.

Example:
    >>> write_nifti_mask("out/labels/2_1.nii.gz", mask)        # doctest: +SKIP
    >>> read_nifti_mask("out/labels/2_1.nii.gz", mask.shape)    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, cast

import numpy as np

from engine.errors import MaskError, ReadError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_JSON = "labels.json"
COLOUR_TABLE = "labels.ctbl"
# distinct colours for a Slicer colour table (class 1, 2, ...), repeated beyond the list
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def nifti_stem(path: str | Path) -> str | None:
    """The file name without ``.nii``/``.nii.gz`` (None when it is not a NIfTI name)."""
    name = Path(path).name
    for sfx in NIFTI_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return None


def write_nifti_mask(path: str | Path, mask: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Write an integer label map (H,W) as a ``(W,H,1)`` NIfTI label volume, atomically.

    Args:
        path: destination ending in ``.nii.gz`` (or ``.nii``).
        mask: integer label map (H,W), 0 = background.
        spacing: ``(row spacing, column spacing)`` in mm (DICOM PixelSpacing order), or None for 1 mm.
    """
    import nibabel as nib

    from engine.fsutil import atomic_path

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskError(f"expected a 2D label map, got shape {mask.shape}", path=path, hint="pass one mask (H,W)")
    dtype = np.uint8 if int(mask.max(initial=0)) <= 255 else np.uint16
    data = np.ascontiguousarray(mask.T[:, :, None]).astype(dtype)
    sy, sx = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    affine = np.diag([-sx, -sy, 1.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_intent("label")
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path


def read_nifti_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 2D NIfTI label map written in the ``(W,H,1)`` convention as uint8/uint16 (H,W).

    Args:
        path: ``.nii``/``.nii.gz`` file.
        shape: the image's ``(H, W)`` to check against (None: no check).

    Raises:
        ReadError: unreadable file; MaskError: not 2D, non-integer labels, or a size that does not fit.
    """
    import nibabel as nib
    from nibabel.dataobj_images import DataobjImage

    path = Path(path)
    try:
        # NIfTI/Analyze loaders return array images; anything else fails on .dataobj and is reported below
        img = cast(DataobjImage, nib.load(str(path)))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ReadError(f"cannot read NIfTI ({exc})", path=path, hint="re-export the mask") from None
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise MaskError(f"NIfTI mask has shape {data.shape}; only 2D masks (W,H) or (W,H,1) are supported",
                        path=path, hint="export one slice per image")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise MaskError("NIfTI mask holds non-integer values", path=path,
                            hint="save label maps with an integer data type")
    if data.min(initial=0) < 0 or data.max(initial=0) > 65535:
        raise MaskError("NIfTI mask holds class ids outside 0..65535", path=path, hint="fix the label map")
    out = np.ascontiguousarray(data.T)
    out = out.astype(np.uint8 if int(out.max(initial=0)) <= 255 else np.uint16)
    if shape is not None and out.shape != tuple(shape):
        if out.shape[::-1] == tuple(shape):
            raise MaskError(f"NIfTI mask is stored (H,W)={data.shape} but this workbench expects (W,H,1) "
                            f"for a {shape[0]}x{shape[1]} image", path=path,
                            hint="save the mask in the ITK/Slicer convention (first axis = columns)")
        raise MaskError(f"NIfTI mask is {out.shape[0]}x{out.shape[1]} but the image is {shape[0]}x{shape[1]}",
                        path=path, hint="re-export the mask at the image's size")
    return out


def colour_table(labels: dict[int, str]) -> str:
    """A 3D Slicer colour table (``.ctbl``) naming the class ids: ``id name R G B A`` per line."""
    lines = ["# segwb label map colour table (3D Slicer .ctbl)", f"# {len(labels)} values"]
    for k, name in sorted(labels.items()):
        r, g, b = (0, 0, 0) if int(k) == 0 else _PALETTE[(int(k) - 1) % len(_PALETTE)]
        a = 0 if int(k) == 0 else 255
        lines.append(f"{int(k)} {'_'.join(str(name).split()) or f'class_{k}'} {r} {g} {b} {a}")
    return "\n".join(lines) + "\n"
