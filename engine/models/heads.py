"""Heads shared by all architectures, and the base class of the custom architectures.

- :class:`PresenceHead`: image-level "is the structure present" logit from deep features
  (global average pool -> dropout -> linear -> 1 logit), the same recipe smp's
  ``aux_params`` classification head uses, so every architecture gets the same head.
- :class:`CustomSegModel`: what a custom architecture implements so that
  :class:`engine.models.SegmentationNet` can wrap it (logits + bottleneck features).
"""

from __future__ import annotations

import torch
from torch import nn


class PresenceHead(nn.Module):
    """Global-average-pool ``(N,C,h,w)`` features -> dropout -> linear -> ``(N,1)`` logits."""

    def __init__(self, in_channels: int, dropout: float = 0.2):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(in_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` float (N,C,h,w) -> logits float (N,1)."""
        return self.linear(self.dropout(torch.flatten(self.pool(features), 1)))


class CustomSegModel(nn.Module):
    """Base class of the hand-written architectures.

    Subclasses set ``bottleneck_channels`` (channels of the deep features the presence head
    pools) and ``size_divisor`` (H and W of the input must be multiples of it), and implement
    ``forward(x) -> (logits (N,K,H,W), bottleneck (N,bottleneck_channels,h,w))``.
    """

    bottleneck_channels: int
    size_divisor: int = 16

    def pretrained_target(self) -> nn.Module | None:
        """The sub-module a local pretrained-encoder file is loaded into (None: not supported)."""
        return None


def he_init(module: nn.Module) -> None:
    """He (Kaiming normal, fan-in, ReLU gain) init for convs/linears; norms to (1, 0); biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
