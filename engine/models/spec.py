"""The model specification stored in every model card: :class:`ModelSpec`.

A spec names an architecture and its hyper-parameters and nothing else (no weights),
so ``build_model(spec)`` rebuilds the same network anywhere, offline.

Example:
    >>> spec = ModelSpec(arch="unet_classic", base_channels=16, num_classes=2)
    >>> ModelSpec.from_json(spec.to_json()) == spec
    True
    >>> ModelSpec(arch="unet", encoder="resnet18", pretrained="imagenet")  # doctest: +SKIP
    ConfigError: pretrained='imagenet' would need a download ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import JsonConfig
from engine.errors import ConfigError

#: File suffixes accepted as local pretrained-weight files.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


def looks_like_local_path(value: str) -> bool:
    """True when ``value`` reads as a local file path rather than a weight-set name or URL."""
    if "://" in value:
        return False
    return ("/" in value or "\\" in value or value.startswith(("~", "."))
            or value.lower().endswith(WEIGHT_SUFFIXES))


def check_pretrained_value(value: str | None) -> None:
    """Reject any ``pretrained`` value that is not ``None`` or a local file path.

    Raises:
        ConfigError: for names such as ``"imagenet"`` or URLs, which would need a download.
    """
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or not looks_like_local_path(value):
        raise ConfigError(
            f"pretrained={value!r} would need a download, and nothing is downloaded at run time",
            hint="leave pretrained empty (None) to train from random initialisation, or give the path "
                 "of a local weights file (.safetensors/.pth) that you downloaded yourself")


@dataclass(frozen=True)
class ModelSpec(JsonConfig):
    """What to build. Stored verbatim in model cards (round-trips through JSON).

    Attributes:
        arch: architecture name, lower case (see ``list_architectures()``), e.g. ``"unet"``
            (smp) or ``"unet_classic"``/``"cenet"``/``"dilated_fcn"``/``"doubleunet"`` (custom).
        encoder: smp encoder name (``list_encoders()``) or ``"tu-<timm model>"``; None = the
            smp architecture's default. Ignored by custom architectures.
        in_channels: image channels C of the (N,C,H,W) input (1 = grayscale, 3 = RGB).
        num_classes: K, number of output classes INCLUDING background (K >= 2).
        presence_head: add an image-level "structure present" head (one logit per image).
        presence_dropout: dropout before the presence head's linear layer.
        base_channels: width of custom architectures (None = the paper's width).
        encoder_depth: smp encoder depth; for ``unet_classic`` the number of down/up levels.
        decoder_channels: smp decoder widths (a tuple for U-Net-like decoders, one value for
            decoders that take a single width).
        dropout: the architecture's own dropout (None = architecture default).
        pretrained: None = random initialisation; otherwise a LOCAL weights file for the encoder.
            Names like ``"imagenet"`` and URLs raise :class:`ConfigError`: nothing downloads.
        extra: architecture-specific options (validated at build time; see each architecture).
    """

    arch: str
    encoder: str | None = None
    in_channels: int = 1
    num_classes: int = 2
    presence_head: bool = False
    presence_dropout: float = 0.2
    base_channels: int | None = None
    encoder_depth: int | None = None
    decoder_channels: tuple[int, ...] | None = None
    dropout: float | None = None
    pretrained: str | None = None
    extra: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise ConfigError("ModelSpec.arch must be a non-empty architecture name",
                              hint="see engine.models.list_architectures()")
        object.__setattr__(self, "arch", self.arch.strip().lower())
        if self.encoder is not None:
            object.__setattr__(self, "encoder", str(self.encoder).strip())
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {self.in_channels!r}",
                              hint="use 1 for grayscale images, 3 for RGB")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(
                f"num_classes must be >= 2 (it counts background), got {self.num_classes!r}",
                hint="a binary task (structure vs background) uses num_classes=2")
        if not 0.0 <= float(self.presence_dropout) < 1.0:
            raise ConfigError(f"presence_dropout must be in [0, 1), got {self.presence_dropout}")
        if self.dropout is not None and not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.base_channels is not None and (not isinstance(self.base_channels, int)
                                               or self.base_channels < 1):
            raise ConfigError(f"base_channels must be a positive integer, got {self.base_channels!r}")
        if self.encoder_depth is not None and (not isinstance(self.encoder_depth, int)
                                               or self.encoder_depth < 1):
            raise ConfigError(f"encoder_depth must be a positive integer, got {self.encoder_depth!r}")
        if self.decoder_channels is not None:
            object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
            if not self.decoder_channels or min(self.decoder_channels) < 1:
                raise ConfigError(f"decoder_channels must be positive integers, got {self.decoder_channels}")
        if self.extra is not None and not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a dict of options, got {type(self.extra).__name__}")
        check_pretrained_value(self.pretrained)

    @property
    def options(self) -> dict[str, Any]:
        """``extra`` as a (copied) dict, empty when None."""
        return dict(self.extra or {})
