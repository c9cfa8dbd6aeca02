"""Run-length encodings of the two competitions, their CSV files, and submission writers.

Both conventions number pixels **column-major** (down the first column, then the next):

- ``kaggle`` (Ultrasound Nerve Segmentation): pairs ``start length`` with 1-based,
  absolute, strictly increasing starts. Empty mask = empty string.
- ``siim`` (SIIM-ACR Pneumothorax): pairs ``offset length``; the first offset is the
  0-based absolute index of the first run, each later offset counts from the end of
  the previous run. Empty mask = ``-1``.

Decoding is vectorised and validates every run; malformed input raises
:class:`~engine.errors.RLEError` naming ``where`` (file and row) and the problem.

Example:
    >>> m = np.zeros((4, 3), np.uint8); m[1:3, 1] = 1
    >>> encode(m, "kaggle"), encode(m, "siim")
    ('6 2', '5 2')
    >>> bool((decode("6 2", (4, 3), "kaggle") == m).all())
    True
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from engine.errors import CSVFormatError, RLEError, unknown_name

Convention = Literal["kaggle", "siim"]
_INT_TOKEN = re.compile(r"-?[0-9]+", re.ASCII)
_MAX_DIGITS = 18  # < 2**63: larger values are refused before numpy conversion (no OverflowError)
CONVENTIONS: tuple[str, ...] = ("kaggle", "siim")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise unknown_name("RLE convention", convention, CONVENTIONS)


def runs_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based absolute column-major run starts and lengths of the non-zero pixels of ``mask`` (H,W)."""
    flat = np.asarray(mask).ravel(order="F") != 0
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def encode(mask: np.ndarray, convention: Convention = "kaggle") -> str:
    """Encode the non-zero pixels of a 2-D mask (H,W) as an RLE string.

    Returns ``""`` (kaggle) or ``"-1"`` (siim) for an empty mask.
    """
    _check_convention(convention)
    if np.asarray(mask).ndim != 2:
        raise RLEError(f"can only encode 2-D masks, got shape {np.asarray(mask).shape}",
                       hint="encode one (H,W) mask (or one class) at a time")
    starts, lengths = runs_from_mask(mask)
    if len(starts) == 0:
        return "" if convention == "kaggle" else "-1"
    if convention == "kaggle":
        values = np.empty(2 * len(starts), np.int64)
        values[0::2], values[1::2] = starts + 1, lengths
    else:
        ends = starts + lengths
        offsets = starts.copy()
        offsets[1:] = starts[1:] - ends[:-1]
        values = np.empty(2 * len(starts), np.int64)
        values[0::2], values[1::2] = offsets, lengths
    return " ".join(map(str, values.tolist()))


def parse_runs(rle: str | float | None, shape: tuple[int, int], convention: Convention = "kaggle",
               where: str = "RLE") -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string and return 0-based absolute (starts, lengths).

    Raises:
        RLEError: non-integer tokens, odd count, negative/zero values, overlapping or
            unsorted runs, or runs beyond ``H*W``; the message names ``where``.
    """
    _check_convention(convention)
    text = "" if rle is None or (isinstance(rle, float) and rle != rle) else str(rle).strip()
    if text in ("", "-1"):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = text.split()
    for tok in tokens:
        if not _INT_TOKEN.fullmatch(tok):
            raise RLEError(f"{where}: RLE has a non-integer token {tok[:30]!r}",
                           hint="RLE must be space-separated ASCII integers 'start length ...'")
        if len(tok.lstrip("-")) > _MAX_DIGITS:
            raise RLEError(f"{where}: RLE value {tok[:30]}{'…' if len(tok) > 30 else ''} is far too large",
                           hint="check the RLE convention and the image size; no image has that many pixels")
    values = np.array(tokens, dtype=np.int64)  # every token fits: at most 18 ASCII digits
    if len(values) % 2:
        raise RLEError(f"{where}: RLE has an odd number of values ({len(values)})",
                       hint="RLE must be pairs 'start length'; the row is probably cut off")
    n = int(shape[0]) * int(shape[1])
    cap = max(n, (2**62) // max(1, len(values)))  # so the sums below cannot overflow int64
    if (values > cap).any():
        i = int(np.flatnonzero(values > cap)[0])
        raise RLEError(f"{where}: run {i // 2 + 1} has {'length' if i % 2 else 'start'} {int(values[i])}, beyond the "
                       f"{shape[0]}x{shape[1]} image ({n} pixels)",
                       hint="check the image size and the RLE convention (kaggle vs siim)")
    first, lengths = values[0::2], values[1::2]
    if (lengths <= 0).any():
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise RLEError(f"{where}: run {i + 1} has length {int(lengths[i])}", hint="run lengths must be ≥ 1")
    if convention == "kaggle":
        if (first < 1).any():
            i = int(np.flatnonzero(first < 1)[0])
            raise RLEError(f"{where}: run {i + 1} starts at {int(first[i])}",
                           hint="Kaggle RLE starts are 1-based (≥ 1); is this SIIM-style RLE?")
        starts = first - 1
    else:
        if (first < 0).any():
            i = int(np.flatnonzero(first < 0)[0])
            raise RLEError(f"{where}: run {i + 1} has a negative offset {int(first[i])}",
                           hint="SIIM offsets count from the end of the previous run and are ≥ 0")
        ends_cum = np.cumsum(first + lengths)
        starts = ends_cum - lengths
    ends = starts + lengths
    if len(starts) > 1 and (starts[1:] < ends[:-1]).any():
        i = int(np.flatnonzero(starts[1:] < ends[:-1])[0]) + 1
        raise RLEError(f"{where}: run {i + 1} (start {int(starts[i]) + 1}) overlaps or precedes run {i}",
                       hint="runs must be sorted and must not overlap; for SIIM files use the 'siim' convention")
    if ends[-1] > n:
        raise RLEError(f"{where}: runs reach pixel {int(ends[-1])}, "
                       f"beyond the {shape[0]}x{shape[1]} image ({n} pixels)",
                       hint="check the image size and the RLE convention (kaggle vs siim)")
    return starts, lengths


def decode(rle: str | float | None, shape: tuple[int, int], convention: Convention = "kaggle",
           where: str = "RLE", value: int = 1) -> np.ndarray:
    """Decode an RLE string into a uint8 mask (H,W) with ``value`` on the runs.

    Args:
        rle: the encoded runs; ``""``, ``"-1"``, None or NaN mean empty.
        shape: (height, width) of the image.
        convention: ``kaggle`` or ``siim``.
        where: context for error messages, e.g. ``"train_masks.csv row 12"``.
    """
    starts, lengths = parse_runs(rle, shape, convention, where)
    h, w = int(shape[0]), int(shape[1])
    flat = np.zeros(h * w + 1, np.int16)
    if len(starts):
        flat[starts] += 1  # starts are unique (validated sorted, non-overlapping); so are ends
        flat[starts + lengths] -= 1
    out = (np.cumsum(flat[:-1]) > 0).astype(np.uint8)
    if value != 1:
        out *= np.uint8(value)
    return out.reshape((h, w), order="F")


def decode_union(rles: Iterable[str], shape: tuple[int, int], convention: Convention = "siim",
                 where: str = "RLE") -> np.ndarray:
    """Decode several RLE rows of one image and take their union (SIIM: one row per region)."""
    out = np.zeros(shape, np.uint8)
    for i, r in enumerate(rles):
        out |= decode(r, shape, convention, where=f"{where} (region {i + 1})")
    return out


def convert(rle: str, shape: tuple[int, int], src: Convention, dst: Convention) -> str:
    """Re-encode an RLE string from one convention to the other."""
    return encode(decode(rle, shape, src), dst)


# ---------------------------------------------------------------------------------------------
# CSV files


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CSVFormatError("file not found", path=path, hint="check the path") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CSVFormatError("not UTF-8 text", path=path, hint="save the CSV as UTF-8") from None


@dataclass
class CSVStats:
    """What a CSV read found: rows, duplicates dropped, and problems.

    With ``strict=False`` a bad row only spoils its own image: ``bad_rows`` maps the image id to
    the problem (that image is left out of the rows), ``problems`` lists rows that name no usable
    image id, and ``header_note`` says when a non-standard header was understood.
    """

    n_rows: int = 0
    n_duplicates: int = 0
    header: list[str] = field(default_factory=list)
    bad_rows: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    header_note: str = ""


def _row_problem(strict: bool, stats: CSVStats, path: Path, key: str | None, message: str, hint: str,
                 out: dict | None = None) -> None:
    """Raise (strict) or record a row problem against its image id (``key``), dropping that image."""
    if strict:
        raise CSVFormatError(message, path=path, hint=hint)
    text = f"{path}: {message}. Fix: {hint}"
    if key:
        stats.bad_rows.setdefault(key, text)
        if out is not None:
            out.pop(key, None)
    else:
        stats.problems.append(text)


_KAGGLE_HEADER = ["subject", "img", "pixels"]


def _check_kaggle_header(path: Path, first_row: list[str] | None) -> list[str]:
    if not first_row:
        raise CSVFormatError("CSV is empty", path=path, hint="expected header 'subject,img,pixels'")
    header = [h.strip().lower() for h in first_row]
    if header[:3] != _KAGGLE_HEADER:
        raise CSVFormatError(f"unexpected header {first_row}", path=path,
                             hint="a Kaggle UNS mask CSV has the header 'subject,img,pixels'")
    return header


def check_kaggle_uns_csv_header(path: str | Path) -> None:
    """Check only the header of a ``train_masks.csv`` (reads its first line): for a CSV that mask
    files make unnecessary, so a wrong file is still reported without parsing every row.

    Raises:
        CSVFormatError: missing, not UTF-8, empty, or a wrong header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.readline(65536)
    except FileNotFoundError:
        raise CSVFormatError("file not found", path=path, hint="check the path") from None
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CSVFormatError("not UTF-8 text", path=path, hint="save the CSV as UTF-8") from None
    _check_kaggle_header(path, next(csv.reader(io.StringIO(text)), None))


def read_kaggle_uns_csv(path: str | Path, strict: bool = True) -> tuple[dict[str, str], CSVStats]:
    """Read ``train_masks.csv`` (``subject,img,pixels``) into ``{"{subject}_{img}": rle}``.

    Args:
        strict: raise on the first bad row; with False a bad row only spoils its own image
            (see :class:`CSVStats`).

    Raises:
        CSVFormatError: empty file or wrong header; malformed rows when ``strict`` (the message names the row).
    """
    path = Path(path)
    rows = list(csv.reader(io.StringIO(_read_text(path))))
    header = _check_kaggle_header(path, rows[0] if rows else None)
    out: dict[str, str] = {}
    stats = CSVStats(header=header)
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        subject = row[0].strip()
        img = row[1].strip() if len(row) > 1 else ""
        key = f"{int(subject)}_{int(img)}" if subject.isascii() and subject.isdigit() and img.isascii() \
            and img.isdigit() else None
        if len(row) < 3:
            _row_problem(strict, stats, path, key, f"row {i} has {len(row)} columns, expected 3",
                         "each row is 'subject,img,pixels' (pixels may be empty)", out)
            continue
        pixels = row[2].strip()
        if key is None:
            _row_problem(strict, stats, path, None, f"row {i}: subject/img must be integers, got {subject!r}, {img!r}",
                         "fix or remove the row")
            continue
        stats.n_rows += 1
        if key in stats.bad_rows:
            continue
        if key in out:
            if out[key] == pixels:
                stats.n_duplicates += 1
                continue
            _row_problem(strict, stats, path, key, f"row {i}: image {key} appears twice with different masks",
                         "keep one row per image", out)
            continue
        out[key] = pixels
    return out, stats


_SIIM_ID_HEADERS = ("imageid", "image_id", "id")
_SIIM_RLE_HEADERS = ("encodedpixels", "encoded_pixels", "rle", "pixels", "encoded pixels", "mask")


def read_siim_csv(path: str | Path, strict: bool = True) -> tuple[dict[str, list[str]], CSVStats]:
    """Read a SIIM RLE CSV into ``{ImageId: [rle, ...]}`` (empty list = no pneumothorax).

    Accepts: header ``ImageId,EncodedPixels`` (or `` EncodedPixels`` with a space; variants such as
    ``ImageId,Pixels`` are read the same way and noted in ``stats.header_note``) or no
    header, UTF-8 BOM, CRLF, leading spaces in the RLE, ``-1`` for empty, several rows per
    image (regions; their union is the mask), exact duplicate rows (ignored, counted).

    Args:
        strict: raise on the first bad row; with False a bad row only spoils its own image
            (see :class:`CSVStats`).
    """
    path = Path(path)
    rows = list(csv.reader(io.StringIO(_read_text(path))))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise CSVFormatError("CSV is empty", path=path, hint="expected rows 'ImageId,EncodedPixels'")
    first = [c.strip().lower() for c in rows[0]]
    stats = CSVStats()
    start = 0
    if first and first[0] in _SIIM_ID_HEADERS:
        if len(first) < 2 or first[1] not in _SIIM_RLE_HEADERS:
            raise CSVFormatError(f"unexpected header {rows[0]}", path=path,
                                 hint="a SIIM CSV has the header 'ImageId,EncodedPixels' (or no header)")
        stats.header = [c.strip() for c in rows[0]]
        if first[1] != "encodedpixels":
            stats.header_note = (f"{path.name}: header {','.join(stats.header)} read as ImageId,EncodedPixels "
                                 "(SIIM RLE)")
        start = 1
    elif len(rows[0]) >= 2 and not _looks_like_rle(rows[0][1]):
        raise CSVFormatError(f"unexpected header {rows[0]}", path=path,
                             hint="a SIIM CSV has the header 'ImageId,EncodedPixels' (or no header)")
    out: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows[start:], start=start + 1):
        image_id = row[0].strip()
        if len(row) < 2:
            _row_problem(strict, stats, path, image_id or None, f"row {i} has {len(row)} column(s), expected 2",
                         "each row is 'ImageId,EncodedPixels' (-1 for no mask)", out)
            continue
        rle = row[1].strip()
        if not image_id:
            _row_problem(strict, stats, path, None, f"row {i} has an empty ImageId", "fix or remove the row")
            continue
        if not _looks_like_rle(rle):
            _row_problem(strict, stats, path, image_id, f"row {i}: EncodedPixels {rle[:30]!r} is not an RLE",
                         "use space-separated non-negative integers, or -1 for no mask", out)
            continue
        stats.n_rows += 1
        if image_id in stats.bad_rows:
            continue
        if (image_id, rle) in seen:
            stats.n_duplicates += 1
            continue
        seen.add((image_id, rle))
        regions = out.setdefault(image_id, [])
        if rle != "-1" and rle != "":
            regions.append(rle)
    return out, stats


def _looks_like_rle(text: str) -> bool:
    t = text.strip()
    return t == "" or t == "-1" or all(tok.isascii() and tok.isdigit() for tok in t.split())


def sniff_rle_csv(path: str | Path) -> str | None:
    """Return ``"kaggle"`` or ``"siim"`` when ``path`` looks like that competition's CSV, else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8-sig", errors="replace")
    except OSError:
        return None
    line = head.splitlines()[0] if head else ""
    cols = [c.strip().lower() for c in line.split(",")]
    if cols[:3] == ["subject", "img", "pixels"]:
        return "kaggle"
    if len(cols) >= 2 and cols[0] in _SIIM_ID_HEADERS and cols[1] in _SIIM_RLE_HEADERS:
        return "siim"
    if len(cols) == 2 and "." in cols[0] and _looks_like_rle(cols[1]):
        return "siim"
    return None


# ---------------------------------------------------------------------------------------------
# Writers


def _write_csv(path: str | Path, header: list[str], rows: Iterable[list[str]]) -> Path:
    from engine.fsutil import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_kaggle_uns_submission(path: str | Path, items: Iterable[tuple[str | int, np.ndarray]]) -> Path:
    """Kaggle UNS submission CSV ``img,pixels`` from ``(img_id, mask (H,W))`` pairs."""
    return _write_csv(path, ["img", "pixels"], ([str(i), encode(m, "kaggle")] for i, m in items))


def write_kaggle_uns_train_csv(path: str | Path, items: Iterable[tuple[str, np.ndarray]]) -> Path:
    """``train_masks.csv``-style file ``subject,img,pixels`` from ``("{subject}_{img}", mask)`` pairs."""
    def rows():
        for case_id, m in items:
            subject, _, img = str(case_id).partition("_")
            yield [subject, img, encode(m, "kaggle")]
    return _write_csv(path, ["subject", "img", "pixels"], rows())


def write_siim_csv(path: str | Path, items: Iterable[tuple[str, np.ndarray]], split_regions: bool = True) -> Path:
    """SIIM CSV ``ImageId,EncodedPixels`` from ``(image_id, mask)`` pairs (``-1`` for empty).

    With ``split_regions`` each connected region gets its own row, as in the official
    training CSV; otherwise one row holds the whole mask (the submission format).
    """
    from scipy import ndimage

    def rows():
        for image_id, m in items:
            m = np.asarray(m) != 0
            if not m.any():
                yield [image_id, "-1"]
                continue
            if not split_regions:
                yield [image_id, encode(m, "siim")]
                continue
            lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
            for k in range(1, n + 1):
                yield [image_id, encode(lab == k, "siim")]
    return _write_csv(path, ["ImageId", "EncodedPixels"], rows())


def write_siim_submission(path: str | Path, items: Iterable[tuple[str, np.ndarray]]) -> Path:
    """SIIM submission CSV: one row per image, whole mask, ``-1`` when empty."""
    return write_siim_csv(path, items, split_regions=False)
