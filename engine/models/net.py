"""The one model type the rest of the engine sees: :class:`SegmentationNet`.

It wraps either an smp model or a custom architecture, checks its input cheaply, and always
returns a dict: ``{"mask": logits (N,K,H,W)}`` plus ``"presence": logits (N,1)`` when the spec
asks for a presence head. Softmax over dim 1 of ``"mask"`` gives class probabilities;
``sigmoid("presence")`` the probability that the structure is in the image.

Example:
    >>> from engine.models import ModelSpec, build_model
    >>> net = build_model(ModelSpec(arch="unet_classic", base_channels=8, presence_head=True))
    >>> out = net(torch.rand(2, 1, 64, 64))
    >>> out["mask"].shape, out["presence"].shape
    (torch.Size([2, 2, 64, 64]), torch.Size([2, 1]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError
from engine.models.heads import CustomSegModel, PresenceHead
from engine.models.spec import ModelSpec


class ModelInputError(ConfigError, ValueError):
    """The input tensor does not fit the model (wrong channels, rank or size)."""


class SegmentationNet(nn.Module):
    """Wrapper with a uniform output dict.

    Attributes:
        spec: the :class:`ModelSpec` it was built from.
        net: the wrapped smp or custom model.
        size_divisor: H and W of the input must be multiples of this (pad before calling).
        pretrained_report: what a local pretrained file loaded (None when random init).
    """

    def __init__(self, spec: ModelSpec, net: nn.Module, *, size_divisor: int,
                 presence: PresenceHead | None = None, smp_presence: bool = False):
        super().__init__()
        self.spec = spec
        self.net = net
        self.presence_head = presence
        self.size_divisor = int(size_divisor)
        self._smp_presence = smp_presence
        self.pretrained_report: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`ModelInputError` unless ``x`` is float (N, in_channels, H, W), H, W fit."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ModelInputError(f"model '{self.spec.arch}' expects a float batch (N,C,H,W), got {shape}",
                                  hint="add the batch dimension with x[None] / x.unsqueeze(0)")
        if x.shape[1] != self.spec.in_channels:
            raise ModelInputError(
                f"model '{self.spec.arch}' expects {self.spec.in_channels} input channel(s), got {x.shape[1]}",
                hint="convert the images (grayscale = 1 channel, RGB = 3) or build the model with "
                     f"in_channels={x.shape[1]}")
        if not x.is_floating_point():
            raise ModelInputError(f"model '{self.spec.arch}' expects float input, got {x.dtype}",
                                  hint="scale images to float32 in [0, 1]")
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            ph, pw = -(-h // d) * d, -(-w // d) * d
            raise ModelInputError(
                f"model '{self.spec.arch}' needs height and width divisible by {d}, got {h}x{w}",
                hint=f"pad or resize the input to {ph}x{pw}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` float32 (N,C,H,W) -> ``{"mask": (N,K,H,W) logits[, "presence": (N,1) logits]}``."""
        self.check_input(x)
        if isinstance(self.net, CustomSegModel):
            logits, deep = self.net(x)
            out = {"mask": logits}
            if self.presence_head is not None:
                out["presence"] = self.presence_head(deep)
            return out
        result = self.net(x)
        if self._smp_presence:
            masks, labels = result
            return {"mask": masks, "presence": labels}
        return {"mask": result}

    def extra_repr(self) -> str:
        return f"arch={self.spec.arch!r}, encoder={self.spec.encoder!r}, K={self.spec.num_classes}"
