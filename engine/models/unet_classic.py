"""The original U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), with BatchNorm and padding.

Layout (depth 4, base width b = 64 in the paper):

    contracting: [conv3x3-BN-ReLU x2] -> maxpool2  at widths b, 2b, 4b, 8b, then 16b (bottleneck)
    bottleneck dropout (the paper's "drop-out layers at the end of the contracting path")
    expanding:   up x2 (2x2 transposed conv halving the width, or bilinear + 3x3 conv)
                 -> concat the skip of the same level -> [conv3x3-BN-ReLU x2]
    head:        1x1 conv -> K logits

Differences from the paper, on purpose: convs are padded (padding=1) so the output has the
input's size and no cropping of skips is needed (inference tiles with mirrored borders are done
by the inference module instead); BatchNorm after every conv (the paper predates it). Weights use
He initialisation as in the paper. H and W must be multiples of 2**depth (16 by default).

Options: ``base_channels`` (default 64; 16 or 32 train on a CPU), ``encoder_depth`` = number of
levels (default 4), ``dropout`` at the bottleneck (default 0.0; the paper used dropout, set 0.5
to follow it), ``extra={"up_mode": "transpose" | "bilinear"}`` (default "transpose").
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.heads import CustomSegModel, he_init

UP_MODES = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2, padding 1: (N,in,H,W) -> (N,out,H,W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample x2 halving the width, concatenate the skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, mode: str = "transpose"):
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        else:  # bilinear resize + conv ("resize-convolution", avoids checkerboard artefacts)
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetClassic(CustomSegModel):
    """Classic U-Net. ``forward(x (N,C,H,W))`` -> (logits (N,K,H,W),
    bottleneck (N,b*2**depth,H/2**depth,W/2**depth))."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, up_mode: str = "transpose", dropout: float = 0.0):
        super().__init__()
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.dropout = nn.Dropout(p=dropout) if dropout else nn.Identity()
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], up_mode) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.bottleneck_channels = widths[-1]
        self.size_divisor = 2 ** depth
        he_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        bottleneck = self.dropout(skips.pop())
        y = bottleneck
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y), bottleneck
