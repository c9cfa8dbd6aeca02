"""Dilated fully-convolutional network (Anthimopoulos et al., IEEE JBHI 2018, "LungNet").

"Semantic segmentation of pathological lung tissue with dilated fully convolutional networks".
13 conv layers, no down-sampling (any H, W works):

    x0 = x + Norm(x)                                   input normalisation block
    10 x [3x3 conv, dilation r, 32 maps -> t + Norm(t) -> ReLU]
         r = 1, 1, 2, 3, 5, 8, 13, 21, 34, 55          (the authors' published rates)
    concat(x0, all 10 layer outputs)                  C_in + 10*32 channels
    dropout 0.5
    1x1 conv 128 -> Norm-add -> ReLU;  1x1 conv 32 -> Norm-add -> ReLU;  1x1 conv -> K logits

The "Norm-add" ``t + Norm(t)`` is the authors' ``bn_block`` (their public Keras code). They
trained with batch size 1 and per-batch statistics at test time too, i.e. instance
normalisation, which is our default (``extra={"norm": "batch"}`` switches to BatchNorm, the
choice of the tutorial that reproduced the paper). Rates follow the authors' code: the first two
layers at rate 1, then growing Fibonacci rates; the receptive field covers ~290 px.

``dilated_fcn_residual`` is the tutorial's modified network: a residual connection around every
dilated layer whose input and output widths match (all but the first), no dropout, meant to be
trained with the ``mse`` loss on softmax probabilities (see :mod:`engine.losses`).

Options: ``base_channels`` = maps per dilated layer (default 32), ``dropout`` (default 0.5, 0.0
for the residual variant), ``extra={"rates": [...], "norm": "instance"|"batch",
"head_channels": [128, 32]}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.heads import CustomSegModel, he_init

DEFAULT_RATES: tuple[int, ...] = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55)
NORMS = ("instance", "batch")


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=True)


class NormAdd(nn.Module):
    """``t + Norm(t)``: the authors' normalisation block."""

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.norm = make_norm(kind, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(x)


class ConvNormReLU(nn.Module):
    """kxk conv (dilation r, same padding) -> t + Norm(t) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        self.norm = NormAdd(norm, out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DilatedFCN(CustomSegModel):
    """``forward(x (N,C,H,W))`` -> (logits (N,K,H,W), concatenated features (N,C+L*width,H,W))."""

    size_divisor = 1

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 32,
                 rates: Sequence[int] = DEFAULT_RATES, dropout: float = 0.5, residual: bool = False,
                 norm: str = "instance", head_channels: Sequence[int] = (128, 32)):
        super().__init__()
        self.residual = residual
        self.input_norm = NormAdd(norm, in_channels)
        layers = []
        ch = in_channels
        for r in rates:
            layers.append(ConvNormReLU(ch, width, 3, int(r), norm))
            ch = width
        self.layers = nn.ModuleList(layers)
        cat_ch = in_channels + width * len(rates)
        self.dropout = nn.Dropout(p=dropout) if dropout else nn.Identity()
        head: list[nn.Module] = []
        ch = cat_ch
        for hc in head_channels:
            head.append(ConvNormReLU(ch, int(hc), 1, 1, norm))
            ch = int(hc)
        head.append(nn.Conv2d(ch, num_classes, 1))
        self.head = nn.Sequential(*head)
        self.bottleneck_channels = cat_ch
        he_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.input_norm(x)
        feats = [t]
        for layer in self.layers:
            u = layer(t)
            if self.residual and u.shape == t.shape:
                u = u + t
            t = u
            feats.append(t)
        cat = torch.cat(feats, dim=1)
        return self.head(self.dropout(cat)), cat
