"""CE-Net: Context Encoder Network (Gu et al., IEEE TMI 2019), built from scratch.

    encoder:  ResNet-34-like (BasicBlocks [3, 4, 6, 3], widths b, 2b, 4b, 8b; b = 64)
    context:  DAC block (dense atrous convolution) -> RMP block (residual multi-kernel pooling)
    decoder:  4 decoder blocks (1x1 conv -> 3x3 transposed conv x2 -> 1x1 conv, BN+ReLU each),
              each ADDED to the encoder feature of the same scale (as in the paper's code)
    head:     3x3 conv -> ReLU -> 3x3 conv -> K logits

DAC (paper Fig. 3): four cascade branches summed with the input,
``x + r(d1(x)) + r(c(d3(x))) + r(c(d3(d1(x)))) + r(c(d5(d3(d1(x)))))`` with d1/d3/d5 the 3x3
convs of dilation 1/3/5 and c a 1x1 conv; like the authors' code the branches share the
d1/d3/d5/c weights. RMP (paper Fig. 4): max-pool at kernel = stride = 2, 3, 5 and 6, a shared
1x1 conv to one channel, bilinear upsampling back, concatenated with the input (+4 channels).

Deviations, on purpose:
- The encoder stem has no max-pool, so the total stride is 16 (paper: 32). At the small inputs
  used here (64-256 px) this keeps a bottleneck of 4-16 px on which the RMP pools still mean
  something. H and W must be multiples of 16.
- RMP pool kernels larger than the feature map are clamped to the map size (a global max pool).
- Layer names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1..4``), so with the default
  widths a locally downloaded torchvision ``resnet34`` state dict loads as ``pretrained``.

Options: ``base_channels`` (default 64), ``extra={"blocks": [3, 4, 6, 3]}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.heads import CustomSegModel, he_init


class BasicBlock(nn.Module):
    """ResNet basic block (torchvision layout and names)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-like encoder: returns features at strides 2, 4, 8, 16 with widths b, 2b, 4b, 8b."""

    def __init__(self, in_channels: int, base: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        widths = [base, base * 2, base * 4, base * 8]
        self.widths = widths
        in_ch = base
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(in_ch, w, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            in_ch = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats


class DACBlock(nn.Module):
    """Dense atrous convolution: 4 cascade branches (rates 1 / 3 / 1,3 / 1,3,5 + 1x1) + input."""

    def __init__(self, channels: int):
        super().__init__()
        self.dilate1 = nn.Conv2d(channels, channels, 3, dilation=1, padding=1)
        self.dilate3 = nn.Conv2d(channels, channels, 3, dilation=3, padding=3)
        self.dilate5 = nn.Conv2d(channels, channels, 3, dilation=5, padding=5)
        self.conv1x1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.dilate1(x)
        ab = self.dilate3(a)
        b1 = F.relu(a)
        b2 = F.relu(self.conv1x1(self.dilate3(x)))
        b3 = F.relu(self.conv1x1(ab))
        b4 = F.relu(self.conv1x1(self.dilate5(ab)))
        return x + b1 + b2 + b3 + b4


class RMPBlock(nn.Module):
    """Residual multi-kernel pooling: (N,C,h,w) -> (N,C+4,h,w)."""

    kernels = (2, 3, 5, 6)

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        maps = []
        for k in self.kernels:
            k_eff = max(1, min(k, h, w))
            pooled = F.max_pool2d(x, kernel_size=k_eff, stride=k_eff)
            maps.append(F.interpolate(self.conv(pooled), size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat([*maps, x], dim=1)


class DecoderBlock(nn.Sequential):
    """1x1 conv (C -> C/4) -> 3x3 transposed conv stride 2 -> 1x1 conv (C/4 -> out), BN+ReLU each."""

    def __init__(self, in_ch: int, out_ch: int):
        mid = max(in_ch // 4, 1)
        super().__init__(
            nn.Conv2d(in_ch, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class CENet(CustomSegModel):
    """CE-Net. ``forward(x (N,C,H,W))`` -> (logits (N,K,H,W), context features (N,8b+4,H/16,W/16))."""

    size_divisor = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 blocks: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, base_channels, blocks)
        w = self.encoder.widths
        self.dac = DACBlock(w[3])
        self.rmp = RMPBlock(w[3])
        self.decoder4 = DecoderBlock(w[3] + 4, w[2])
        self.decoder3 = DecoderBlock(w[2], w[1])
        self.decoder2 = DecoderBlock(w[1], w[0])
        self.decoder1 = DecoderBlock(w[0], w[0])
        mid = max(w[0] // 2, 8)
        self.final = nn.Sequential(nn.Conv2d(w[0], mid, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(mid, num_classes, 3, padding=1))
        self.bottleneck_channels = w[3] + 4
        he_init(self)
        for m in self.dac.modules():  # the authors zero the DAC biases
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def pretrained_target(self) -> nn.Module:
        return self.encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1, e2, e3, e4 = self.encoder(x)
        center = self.rmp(self.dac(e4))
        d4 = self.decoder4(center) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        return self.final(d1), center
