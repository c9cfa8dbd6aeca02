"""Architecture description of the click network (torch-free, so cards can be read without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import JsonConfig
from engine.errors import ConfigError


@dataclass(frozen=True)
class ClickNetSpec(JsonConfig):
    """Architecture of :class:`ClickNet` (stored in the click model's card).

    Attributes:
        arch: always ``"click_unet"`` (the only click architecture).
        in_channels: image (1) + positive clicks + negative clicks + previous mask = 4.
        widths: channels of the stride-2 stem and each deeper level.
        fine_channels: width of the full-resolution branch.
    """

    arch: str = "click_unet"
    in_channels: int = 4
    widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    fine_channels: int = 8

    def __post_init__(self) -> None:
        if self.arch != "click_unet":
            raise ConfigError(f"unknown click architecture {self.arch!r}", hint="use click_unet")
        if self.in_channels != 4:
            raise ConfigError(f"a click model takes 4 input channels, got {self.in_channels}",
                              hint="image, positive clicks, negative clicks, previous mask")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not 2 <= len(self.widths) <= 7 or min(self.widths) < 1 or max(self.widths) > 512:
            raise ConfigError(f"click model widths {self.widths} must be 2..7 levels of 1..512 channels")
        if not 1 <= int(self.fine_channels) <= 128:
            raise ConfigError(f"fine_channels must be 1..128, got {self.fine_channels}")

    @property
    def size_divisor(self) -> int:
        return 2 ** len(self.widths)
