"""Which reader handles a file: suffix tables and magic-byte sniffing (no decoding, no heavy imports).

:func:`reader_kind` is the one dispatch rule behind :func:`engine.io.read_image` and
:func:`engine.io.masks.read_mask`: ``raster``, ``tiff`` or ``dicom`` by suffix, and by the first bytes
for files without a suffix.

Example:
    >>> reader_kind("scan.DCM"), is_image_file("a.tiff"), is_image_file("notes.txt")
    ('dicom', True, False)
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ReadError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + TIFF_SUFFIXES + DICOM_SUFFIXES

_READERS: dict[str, str] = {}
for _s in RASTER_SUFFIXES:
    _READERS[_s] = "raster"
for _s in TIFF_SUFFIXES:
    _READERS[_s] = "tiff"
for _s in DICOM_SUFFIXES:
    _READERS[_s] = "dicom"


#: Leading bytes of the formats the readers handle, for files without a (known) suffix.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "raster"), (b"\xff\xd8\xff", "raster"), (b"BM", "raster"), (b"GIF8", "raster"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
)


def sniff_kind(path: str | Path) -> str | None:
    """The reader for a file judged by its first bytes (PNG/JPEG/BMP/GIF/TIFF magic, DICOM preamble),
    or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def reader_kind(path: str | Path) -> str:
    """Which reader handles ``path``: ``raster``, ``tiff`` or ``dicom``.

    Chosen by suffix; files without a suffix are sniffed by their first bytes.

    Raises:
        ReadError: an unsupported suffix, or no suffix and no known signature (names the file).
    """
    path = path if isinstance(path, Path) else Path(path)
    kind = _READERS.get(path.suffix.lower())
    if kind:
        return kind
    if not path.suffix:
        kind = sniff_kind(path)
        if kind:
            return kind
        raise ReadError("file has no suffix and is not a PNG, JPEG, BMP, GIF, TIFF or DICOM file", path=path,
                        hint="give it the right suffix, or remove it from the folder")
    raise ReadError(f"unsupported file type '{path.suffix}'", path=path,
                    hint="supported: " + ", ".join(sorted(_READERS)) + "; convert the file to PNG")


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def is_image_file(path: str | Path) -> bool:
    """True when the suffix is one the readers know (cheap, no I/O)."""
    return Path(path).suffix.lower() in _READERS
