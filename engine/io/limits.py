"""The one pixel limit every reader checks from the file's header, before decoding.

A 1 MB PNG can claim 19000×19000 RGB pixels (1 GB once decoded), a 0.4 MB deflated DICOM
20000², a 2 MB TIFF 50000²: decoding them exhausts memory. Every reader (PNG/JPEG/BMP via
Pillow's header, TIFF via its IFD or tifffile's page shape, DICOM via Rows × Columns ×
NumberOfFrames × SamplesPerPixel) and every header-only size probe calls :func:`check_pixels`
first, so such a file becomes a :class:`~engine.errors.ReadError` naming the file and the
setting, and a dataset scan lists it as a bad file.

The limit counts decoded sample values, ``H × W × frames × channels`` (an RGB image of
N pixels counts 3N). Default :data:`DEFAULT_MAX_PIXELS` (100 M: a 10000² grey image, a 5773²
RGB image; a 1024² chest X-ray is 1 M). Change it with, in order of precedence:

1. :func:`set_max_pixels` (the CLI's ``--max-pixels N``; the app's "Pixel limit" setting),
2. the environment variable ``SEGWB_MAX_PIXELS``,
3. the default.

Example:
    >>> set_max_pixels(1000)
    >>> check_pixels("big.png", 40, 40)     # doctest: +SKIP  (1600 > 1000: ReadError)
    >>> set_max_pixels(None)                 # back to env / default
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import ConfigError, ReadError

DEFAULT_MAX_PIXELS = 100_000_000
ENV_VAR = "SEGWB_MAX_PIXELS"
_override: int | None = None


def set_max_pixels(n: int | None) -> None:
    """Set the process-wide limit (None = back to ``$SEGWB_MAX_PIXELS`` or the default).

    Raises:
        ConfigError: not a positive integer.
    """
    global _override
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise ConfigError(f"pixel limit must be a positive integer, got {n!r}", hint="e.g. --max-pixels 200000000")
    _override = n


def max_pixels() -> int:
    """The limit in force: :func:`set_max_pixels`, else ``$SEGWB_MAX_PIXELS``, else 100 M."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR, "").strip().replace("_", "")
    if env:
        try:
            value = int(float(env))
        except ValueError:
            raise ConfigError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a number",
                              hint=f"set {ENV_VAR} to a positive integer such as 200000000, or unset it") from None
        if value <= 0:
            raise ConfigError(f"{ENV_VAR} must be positive, got {value}", hint=f"unset {ENV_VAR} for the default")
        return value
    return DEFAULT_MAX_PIXELS


def check_pixels(path: str | Path | None, height: int, width: int, frames: int = 1, channels: int = 1) -> None:
    """Raise :class:`ReadError` when ``height × width × frames × channels`` exceeds the limit,
    or when a size is not positive.

    Called with header facts only, before any pixel data is decoded.
    """
    h, w, f, c = (int(v) for v in (height, width, max(1, frames or 1), max(1, channels or 1)))
    if h <= 0 or w <= 0:
        raise ReadError(f"header gives an image size of {h}x{w}", path=path,
                        hint="the file is damaged or not an image; re-export it")
    n = h * w * f * c
    limit = max_pixels()
    if n > limit:
        what = f"{h}x{w}" + (f"x{c} channels" if c > 1 else "") + (f" x {f} frames" if f > 1 else "")
        raise ReadError(f"image claims {what} = {n:,} pixel values, over the limit of {limit:,}",
                        path=path, hint=f"if the file is genuine, raise the limit with --max-pixels N or "
                        f"{ENV_VAR}=N (decoding it needs about {_size_text(n * 4)} of memory as float32); "
                        "otherwise the header is damaged or forged")


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.1f} MB"


#: Bytes allowed per counted pixel value when a compressed stream is inflated before its header can be
#: checked (deflated DICOM, gzip NIfTI): 4 bytes (float32 / int32 samples) plus a fixed allowance for headers.
BYTES_PER_VALUE = 4
HEADER_ALLOWANCE = 64 * 2**20
_CHUNK = 4 * 2**20


def max_inflated_bytes() -> int:
    """The most bytes a deflate/gzip stream may inflate to: ``max_pixels() × 4 + 64 MiB`` (464 MiB by default)."""
    return max_pixels() * BYTES_PER_VALUE + HEADER_ALLOWANCE


def inflate_capped(data: bytes, path: str | Path | None, *, wbits: int = -15, cap: int | None = None) -> bytes:
    """Inflate a deflate (``wbits=-15``, raw) or gzip (``wbits=31``) stream in bounded chunks.

    Stops and raises :class:`ReadError` naming the file as soon as the output exceeds ``cap``
    (default :func:`max_inflated_bytes`, derived from the pixel limit), so a 500 KB stream that
    claims gigabytes never allocates them.

    Raises:
        ReadError: over the cap, or a damaged stream.

    Example:
        >>> import zlib
        >>> inflate_capped(zlib.compress(b"abc")[2:-4], "x.dcm")
        b'abc'
    """
    import zlib

    limit = max_inflated_bytes() if cap is None else int(cap)
    d = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    total = 0
    buf = data
    try:
        while True:
            out = d.decompress(buf, _CHUNK)
            total += len(out)
            if total > limit:
                raise ReadError(f"compressed data inflates to more than {_size_text(limit)} (the pixel limit of "
                                f"{max_pixels():,} values allows no more)", path=path,
                                hint=f"if the file is genuine, raise the limit with --max-pixels N or {ENV_VAR}=N; "
                                     "otherwise the file is damaged or forged")
            parts.append(out)
            buf = d.unconsumed_tail
            if d.eof or (not buf and not out):
                break
        if not d.eof:
            tail = d.flush()
            if total + len(tail) > limit:
                raise ReadError(f"compressed data inflates to more than {_size_text(limit)}", path=path,
                                hint=f"raise the limit with --max-pixels N or {ENV_VAR}=N if the file is genuine")
            parts.append(tail)
    except zlib.error as exc:
        raise ReadError(f"damaged compressed data ({exc})", path=path, hint="re-export the file") from None
    return b"".join(parts)
