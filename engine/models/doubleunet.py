"""DoubleU-Net (Jha, Riegler, Johansen, Halvorsen & Johansen, IEEE CBMS 2020).

Two stacked U-Nets:

    network 1: VGG-19 encoder (skips after block1_conv2, block2_conv2, block3_conv4,
               block4_conv4; bottom = block5_conv4 at stride 16) -> ASPP -> decoder 1
               (4 x [bilinear up x2, concat VGG skip, conv block]) -> output 1
    gate:      x2 = input * foreground-probability(output 1)
    network 2: own encoder (4 x [conv block, max-pool]) -> ASPP -> decoder 2 (4 x [up x2,
               concat skips of BOTH encoders, conv block]) -> output 2
    output:    concat(output 1, output 2) -> 1x1 conv -> K logits

conv block = (3x3 conv -> BN -> ReLU) x 2 -> squeeze-and-excitation (ratio 8).
ASPP = [image pool -> 1x1 conv] + 1x1 conv + 3x3 convs at rates 6, 12, 18 -> concat -> 1x1 conv.

How K-class logits are produced (the paper is binary, with a 1-channel sigmoid per output):
- Each network's output block is a 1x1 conv to K logits (for K = 2 the softmax foreground
  probability ``softmax(l)[1] = sigmoid(l1 - l0)`` is exactly the paper's sigmoid mask).
- The gate multiplies the input by ``1 - softmax(output1)[background]``, the probability of
  "any foreground class", which equals the paper's sigmoid mask when K = 2.
- The paper concatenates the two masks as the final output and applies the loss to both.
  Here concat(output1, output2) (2K channels) goes through a learnable 1x1 conv to K logits,
  initialised to the average ``(output1 + output2) / 2``, so at the start both decoders receive
  the same gradient as with the paper's two-mask loss, and the network may learn to trust
  output 2 more. The result follows the project convention: K logits, softmax over channels.

Deviations, on purpose: the VGG-19 encoder has BatchNorm after each conv by default
(``vgg19_bn`` layout) because every model here trains from scratch, where plain VGG-19 trains
poorly; ``extra={"encoder_bn": False}`` gives the plain ``vgg19`` layout. Either way the
``encoder1.features`` indices match torchvision's, so a locally downloaded torchvision
``vgg19``/``vgg19_bn`` state dict loads as ``pretrained`` (at full width). The ASPP image-pool
branch has no BatchNorm (a 1x1 map would break batch-size-1 training).

Width: ``base_channels`` (default 64 = paper) scales every width by ``base_channels / 64``;
``base_channels=16`` is the small CPU version. H and W must be multiples of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.heads import CustomSegModel, he_init

VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                     512, 512, 512, 512, "M", 512, 512, 512, 512)


def _scale(c: int, mult: float) -> int:
    return max(4, int(round(c * mult)))


class VGG19Encoder(nn.Module):
    """VGG-19 conv layers (torchvision indices, final max-pool dropped).

    ``forward(x)`` -> (skips [stride 1, 2, 4, 8], bottom at stride 16).
    """

    def __init__(self, in_channels: int, mult: float = 1.0, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        taps: list[int] = []  # index of the ReLU whose output is a skip (just before each pool)
        ch = in_channels
        for v in VGG19_CFG:
            if v == "M":
                taps.append(len(layers) - 1)
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = _scale(int(v), mult)
            layers.append(nn.Conv2d(ch, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            ch = out
        self.features = nn.Sequential(*layers)
        self.taps = tuple(taps)
        self.skip_channels = [_scale(c, mult) for c in (64, 128, 256, 512)]
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                skips.append(x)
        return skips, x


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(W2 relu(W1 gap(x))), reduction ratio 8."""

    def __init__(self, channels: int, ratio: int = 8):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConvBlock(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            SqueezeExcite(out_ch),
        )


def _cbr(in_ch: int, out_ch: int, k: int, d: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, padding=d * (k // 2), dilation=d, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (rates 1, 6, 12, 18 + image pooling)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.pool_conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList([_cbr(in_ch, out_ch, 1)] + [_cbr(in_ch, out_ch, 3, d) for d in (6, 12, 18)])
        self.project = _cbr(out_ch * 5, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = F.interpolate(self.pool_conv(F.adaptive_avg_pool2d(x, 1)), size=(h, w),
                               mode="bilinear", align_corners=False)
        return self.project(torch.cat([pooled] + [b(x) for b in self.branches], dim=1))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class DoubleUNet(CustomSegModel):
    """``forward(x (N,C,H,W))`` -> (logits (N,K,H,W), VGG bottom features (N,512*m,H/16,W/16))."""

    size_divisor = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 encoder_bn: bool = True):
        super().__init__()
        m = base_channels / 64.0
        self.encoder1 = VGG19Encoder(in_channels, m, encoder_bn)
        s1 = self.encoder1.skip_channels  # strides 1, 2, 4, 8
        aspp_ch = _scale(64, m)
        dec = [_scale(c, m) for c in (256, 128, 64, 32)]
        enc2 = [_scale(c, m) for c in (32, 64, 128, 256)]
        self.aspp1 = ASPP(self.encoder1.out_channels, aspp_ch)
        ch = aspp_ch
        blocks = []
        for i, f in enumerate(dec):
            blocks.append(ConvBlock(ch + s1[3 - i], f))
            ch = f
        self.decoder1 = nn.ModuleList(blocks)
        self.out1 = nn.Conv2d(ch, num_classes, 1)

        blocks, ch = [], in_channels
        for f in enc2:
            blocks.append(ConvBlock(ch, f))
            ch = f
        self.encoder2 = nn.ModuleList(blocks)
        self.aspp2 = ASPP(ch, aspp_ch)
        ch = aspp_ch
        blocks = []
        for i, f in enumerate(dec):
            blocks.append(ConvBlock(ch + s1[3 - i] + enc2[3 - i], f))
            ch = f
        self.decoder2 = nn.ModuleList(blocks)
        self.out2 = nn.Conv2d(ch, num_classes, 1)
        self.fuse = nn.Conv2d(2 * num_classes, num_classes, 1)
        self.bottleneck_channels = self.encoder1.out_channels
        he_init(self)
        with torch.no_grad():  # start as the average of the two outputs
            eye = torch.eye(num_classes)[:, :, None, None] * 0.5
            self.fuse.weight.copy_(torch.cat([eye, eye], dim=1))
            assert self.fuse.bias is not None  # Conv2d is built with bias=True
            self.fuse.bias.zero_()

    def pretrained_target(self) -> nn.Module:
        return self.encoder1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips1, bottom = self.encoder1(x)
        y = self.aspp1(bottom)
        for i, block in enumerate(self.decoder1):
            y = block(torch.cat([_up(y), skips1[3 - i]], dim=1))
        logits1 = self.out1(y)

        fg = 1.0 - torch.softmax(logits1, dim=1)[:, :1]
        z = x * fg
        skips2 = []
        for block in self.encoder2:
            z = block(z)
            skips2.append(z)
            z = F.max_pool2d(z, 2)
        y = self.aspp2(z)
        for i, block in enumerate(self.decoder2):
            y = block(torch.cat([_up(y), skips1[3 - i], skips2[3 - i]], dim=1))
        logits2 = self.out2(y)
        return self.fuse(torch.cat([logits1, logits2], dim=1)), bottom
