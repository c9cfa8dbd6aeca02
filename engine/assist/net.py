"""The click network: a small U-Net that takes image + click maps + previous mask, returns one logit map.

Built for a CPU: the first convolution has stride 2, so the U-Net proper runs at half the working
resolution (128² for a 256² view) with slowly growing widths (16, 32, 48, 64, 96 by default), and a
light full-resolution branch (one 3×3 convolution of the input, fused with the upsampled decoder
output) restores pixel-accurate edges. About 0.5 M parameters (2 MB in float32); one 256² view
costs ~50–100 ms on two CPU cores.

Input ``(N, 4, S, S)`` float32: channel 0 the view's image (z-scored), 1 the positive-click disks,
2 the negative-click disks, 3 the previous mask (0/1). Output ``(N, 1, S, S)`` logits of "object".
S must be a multiple of ``2 ** len(widths)`` (32 by default).

Example:
    >>> net = ClickNet(ClickNetSpec())
    >>> net(torch.zeros(1, 4, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.assist.spec import ClickNetSpec


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ClickNet(nn.Module):
    """See the module docstring. ``forward(x (N,4,S,S)) -> logits (N,1,S,S)``."""

    def __init__(self, spec: ClickNetSpec):
        super().__init__()
        self.spec = spec
        w = spec.widths
        f = spec.fine_channels
        self.stem = nn.Sequential(*_cbr(spec.in_channels, w[0], 2), *_cbr(w[0], w[0]))
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), *_cbr(w[i], w[i + 1]), *_cbr(w[i + 1], w[i + 1]))
                                   for i in range(len(w) - 1))
        self.ups = nn.ModuleList(nn.Sequential(*_cbr(w[i + 1] + w[i], w[i]), *_cbr(w[i], w[i]))
                                 for i in reversed(range(len(w) - 1)))
        self.fine = nn.Sequential(*_cbr(spec.in_channels, f))
        self.fuse = nn.Sequential(nn.Conv2d(w[0] + f, f, 1, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True),
                                  *_cbr(f, f))
        self.head = nn.Conv2d(f, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            skip = skips.pop()
            y = up(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.fuse(torch.cat([y, self.fine(x)], 1)))
