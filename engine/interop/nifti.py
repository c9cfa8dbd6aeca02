"""NIfTI-1 label maps (``nibabel``): one ``.nii.gz`` per 2D case, plus a labels JSON and a Slicer colour table.

Axis convention (the one ITK, SimpleITK, MONAI's image readers and 3D Slicer use for 2D
images): the data array has shape ``(W, H, 1)``: first axis = image column (x), second = image
row (y), ``data[x, y, 0] == mask[y, x]``. The affine is ``diag(-sx, -sy, 1, 1)`` (ITK's LPS
identity direction expressed in NIfTI's RAS), so in Slicer's axial (red) view columns run left
to right and rows top to bottom: the mask shows the right way round, on top of the same image
loaded through ITK. ``sx``/``sy`` are the pixel spacing in mm when the source DICOM gives one
(PixelSpacing = [row, column] spacing), else 1. The intent code is ``NIFTI_INTENT_LABEL`` and
the dtype uint8 (uint16 beyond 255 classes); ``labels.json`` names the class ids.

Reading honours the affine (sform, else qform): the array is reoriented with
``nib.orientations`` (``io_orientation`` → ``ornt_transform`` → ``apply_orientation``) to the
writer's orientation, axis codes ``("L", "P", "S")`` (first axis towards patient Left = image
columns, second towards Posterior = image rows). So a file with an identity (RAS) affine, a
90°-rotated or mirrored affine, or a square mask stored ``(H,W,1)`` with an affine that says so,
imports to the same mask as the ITK-convention file; only the axis directions count, not the
spacing. An oblique or sheared affine is refused (the mask is not on the image grid). A file
with no orientation (sform and qform codes 0) is taken as already in the convention.

Example:
    >>> write_nifti_mask("out/labels/2_1.nii.gz", mask)        # doctest: +SKIP
    >>> read_nifti_mask("out/labels/2_1.nii.gz", mask.shape)    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, cast

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


#: world orientation of the workbench's convention, nibabel axis codes: first axis towards patient Left
#: (image columns), second towards Posterior (image rows), third Superior: ITK's LPS identity direction
ITK_AXCODES = ("L", "P", "S")
_OBLIQUE_TOL = 1e-4


def nifti_orientation(header: Any, path: str | Path | None = None) -> np.ndarray:
    """The ``nib.orientations`` transform that brings a NIfTI's data array into the ``(W,H,1)``
    ITK convention (:data:`ITK_AXCODES`), from its header alone (no pixel data read).

    - sform or qform code > 0: the affine is honoured. Axis permutations and flips (any 90° rotation,
      mirrored axes, (H,W,1) storage with a matching affine) are undone; an oblique or sheared affine
      (a data axis not parallel to a world axis) is refused.
    - both codes 0 (no orientation recorded): the data is taken as already in the convention.

    Returns:
        float (3, 2) orientation transform for :func:`nibabel.orientations.apply_orientation`.

    Raises:
        MaskError: oblique, sheared or degenerate affine.
    """
    from nibabel import orientations as no

    identity = np.array([[0, 1], [1, 1], [2, 1]], float)
    try:
        codes = int(header["sform_code"]), int(header["qform_code"])
    except (KeyError, ValueError, TypeError):
        codes = (0, 0)
    if codes == (0, 0):
        return identity
    affine = np.asarray(header.get_best_affine(), float)
    rz = affine[:3, :3]
    if not np.all(np.isfinite(rz)):
        raise MaskError("NIfTI affine holds non-finite values", path=path,
                        hint="re-export the mask with a valid affine")
    norms = np.linalg.norm(rz, axis=0)
    if np.any(norms <= 0):
        raise MaskError("NIfTI affine is degenerate (a data axis has zero length)", path=path,
                        hint="re-export the mask with a valid affine")
    cos = np.abs(rz) / norms
    if np.any(cos.max(axis=0) < 1 - _OBLIQUE_TOL) or len(set(np.argmax(cos, axis=0).tolist())) < 3:
        raise MaskError("NIfTI affine is oblique or sheared (its axes are not parallel to the world axes); "
                        "a 2D label map must lie on the image grid", path=path,
                        hint="resample the mask onto the image grid (e.g. in 3D Slicer: Resample Scalar Volume "
                             "onto the image), then export it again")
    return no.ornt_transform(no.io_orientation(affine), no.axcodes2ornt(ITK_AXCODES))


def read_nifti_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 2D NIfTI label map as uint8/uint16 (H,W), honouring its affine.

    The header is checked before any voxel is read: the data type must be a scalar integer or float
    (RGB24, complex and vector data are refused), the size must pass the pixel limit
    (:func:`engine.io.limits.check_pixels`) and, with ``shape``, fit the image once reoriented
    (:func:`nifti_orientation`). Only then is the (gzip) data read, which nibabel reads for exactly
    the header's size.

    Args:
        path: ``.nii``/``.nii.gz`` file.
        shape: the image's ``(H, W)`` to check against (None: no check).

    Raises:
        ReadError: unreadable file or over the pixel limit; MaskError: not 2D, RGB/vector/complex data,
        an oblique affine, non-integer labels, or a size that does not fit.
    """
    import nibabel as nib
    from nibabel import orientations as no
    from nibabel.dataobj_images import DataobjImage

    from engine.io.limits import check_pixels, max_inflated_bytes

    path = Path(path)
    try:
        # NIfTI/Analyze loaders return array images (header only: pixels are read on demand)
        img = cast(DataobjImage, nib.load(str(path)))
        header = cast(Any, img.header)
        dims = tuple(int(d) for d in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ReadError(f"cannot read NIfTI ({type(exc).__name__}: {str(exc)[:200]})", path=path,
                        hint="re-export the mask") from None
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise MaskError(f"NIfTI mask has data type {header.get_data_dtype()} (RGB, vector or complex values), "
                        "not a label map", path=path, hint="save the label map as one integer value per pixel")
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise MaskError(f"NIfTI mask has shape {dims}", path=path, hint="export one 2D slice per image")
    if any(d != 1 for d in dims[3:]):
        raise MaskError(f"NIfTI mask has shape {dims}: more than one value per pixel (a vector or time series)",
                        path=path, hint="export one 2D label map per image")
    dims3 = (dims + (1,))[:3]
    check_pixels(path, dims3[0], dims3[1], frames=dims3[2])
    n_bytes = dims3[0] * dims3[1] * dims3[2] * dtype.itemsize
    if n_bytes > max_inflated_bytes():
        raise ReadError(f"NIfTI voxel data would take {n_bytes:,} bytes, over the {max_inflated_bytes():,} "
                        "the pixel limit allows", path=path,
                        hint="save the label map as uint8/uint16, or raise the limit with --max-pixels N")
    if sum(d > 1 for d in dims3) > 2:
        raise MaskError(f"NIfTI mask has shape {dims}; only 2D masks (W,H) or (W,H,1) are supported",
                        path=path, hint="export one slice per image")
    transform = nifti_orientation(header, path)
    out_dims = [0, 0, 0]
    for axis, (to, _) in enumerate(transform):
        out_dims[int(to)] = dims3[axis]
    if out_dims[2] != 1:
        raise MaskError(f"NIfTI mask of shape {dims} is not an axial slice once its affine is applied",
                        path=path, hint="export the 2D mask in the image plane (first axis = columns)")
    if shape is not None and (out_dims[1], out_dims[0]) != tuple(shape):
        if (out_dims[0], out_dims[1]) == tuple(shape):
            raise MaskError(f"NIfTI mask is stored (H,W)={tuple(dims3[:2])} but this workbench expects (W,H,1) "
                            f"for a {shape[0]}x{shape[1]} image", path=path,
                            hint="save the mask in the ITK/Slicer convention (first axis = columns)")
        raise MaskError(f"NIfTI mask is {out_dims[1]}x{out_dims[0]} but the image is {shape[0]}x{shape[1]}",
                        path=path, hint="re-export the mask at the image's size")
    try:
        data = np.asarray(img.dataobj).reshape(dims3)
    except Exception as exc:  # noqa: BLE001 - truncated/damaged data: nibabel and gzip raise many types
        raise ReadError(f"cannot read the NIfTI voxel data ({type(exc).__name__}: {str(exc)[:200]})", path=path,
                        hint="the file is truncated or damaged; re-export the mask") from None
    data = no.apply_orientation(data, transform)[:, :, 0]
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise MaskError("NIfTI mask holds non-integer values", path=path,
                            hint="save label maps with an integer data type")
    if data.min(initial=0) < 0 or data.max(initial=0) > 65535:
        raise MaskError("NIfTI mask holds class ids outside 0..65535", path=path, hint="fix the label map")
    out = np.ascontiguousarray(data.T)
    return out.astype(np.uint8 if int(out.max(initial=0)) <= 255 else np.uint16)


def colour_table(labels: dict[int, str]) -> str:
    """A 3D Slicer colour table (``.ctbl``) naming the class ids: ``id name R G B A`` per line."""
    lines = ["# segwb label map colour table (3D Slicer .ctbl)", f"# {len(labels)} values"]
    for k, name in sorted(labels.items()):
        r, g, b = (0, 0, 0) if int(k) == 0 else _PALETTE[(int(k) - 1) % len(_PALETTE)]
        a = 0 if int(k) == 0 else 255
        lines.append(f"{int(k)} {'_'.join(str(name).split()) or f'class_{k}'} {r} {g} {b} {a}")
    return "\n".join(lines) + "\n"
