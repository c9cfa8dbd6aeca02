"""Image-level classifiers for the two-stage pipeline (classifier gates segmenter).

Built with timm (``pretrained=False``; never downloads) with one output logit per image:
``sigmoid(logit)`` = probability that the structure is present. DenseNet-121 is the CheXNet
backbone the pneumothorax study used. Train with :class:`engine.losses.PresenceLoss` and
``pos_weight = presence_pos_weight(labels)``.

Example:
    >>> clf = build_classifier("resnet18", in_channels=1)
    >>> clf(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.config import JsonConfig
from engine.errors import ConfigError, unknown_name
from engine.models.net import ModelInputError
from engine.models.pretrained import load_local_weights, resolve_pretrained_path
from engine.models.spec import check_pretrained_value

#: name -> description. All are timm models that build offline with random weights.
CLASSIFIERS: dict[str, str] = {
    "densenet121": "DenseNet-121 (CheXNet backbone), 7.0 M parameters",
    "resnet18": "ResNet-18, 11.2 M parameters",
    "resnet34": "ResNet-34, 21.3 M parameters",
    "efficientnet_b0": "EfficientNet-B0, 4.0 M parameters",
    "mobilenetv3_small_100": "MobileNetV3-Small, 1.5 M parameters (fast on CPU)",
    "cnn_small": "plain CNN (5 × conv-BN-ReLU blocks, global max + mean pooling), 0.4 M parameters; "
                 "trains from scratch on CPU (the demo presence classifier)",
}


class SmallCNN(nn.Module):
    """Five conv-BN-ReLU blocks (16→128 channels, stride-2 pooling) then global max + mean pooling
    and one linear logit. Max pooling keeps a small bright structure visible to the logit, which
    a mean-pooled ImageNet backbone trained from scratch on a few hundred images struggles with.

    ``forward(x (N,C,H,W)) -> (N,1)`` logits; any H, W >= 32.
    """

    def __init__(self, in_channels: int = 1, drop_rate: float = 0.0, width: int = 16):
        super().__init__()
        chans = [in_channels] + [width * m for m in (1, 2, 4, 8, 8)]
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(inplace=True), nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
            if i < 4:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2 * chans[-1], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        return self.fc(self.drop(pooled))


def list_classifiers() -> list[str]:
    """Registered classifier names, sorted."""
    return sorted(CLASSIFIERS)


@dataclass(frozen=True)
class ClassifierSpec(JsonConfig):
    """What :func:`build_classifier` builds; stored in the classifier's model card."""

    name: str = "densenet121"
    in_channels: int = 1
    pretrained: str | None = None
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.name).strip().lower())
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        check_pretrained_value(self.pretrained)


class PresenceClassifier(nn.Module):
    """timm backbone with one logit: ``forward(x (N,C,H,W) float) -> (N,1) logits``."""

    def __init__(self, spec: ClassifierSpec, backbone: nn.Module):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.pretrained_report: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            got = f"{x.shape[1]} channel(s)" if x.ndim == 4 else f"shape {tuple(x.shape)}"
            raise ModelInputError(
                f"classifier '{self.spec.name}' expects (N,{self.spec.in_channels},H,W) input, got {got}",
                hint="convert the images (grayscale = 1 channel, RGB = 3) or build the classifier "
                     "with the matching in_channels")
        return self.backbone(x)


def build_classifier(name: str | ClassifierSpec = "densenet121", in_channels: int = 1,
                     pretrained: str | None = None, drop_rate: float = 0.0,
                     *, load_pretrained: bool = True) -> PresenceClassifier:
    """Build an image-level presence classifier with random weights (or a LOCAL weights file).

    Args:
        name: a name from :func:`list_classifiers` or a :class:`ClassifierSpec` (then the other
            arguments are ignored).
        in_channels: image channels.
        pretrained: None, or the path of a local timm/torchvision state dict for this backbone
            (its classifier layer is skipped); names such as "imagenet" raise ConfigError.
        drop_rate: dropout before the final linear layer.
        load_pretrained: False skips loading ``pretrained`` (a checkpoint is loaded afterwards).

    Example:
        >>> clf = build_classifier("densenet121", in_channels=1)
        >>> torch.sigmoid(clf(torch.rand(1, 1, 128, 128)))  # doctest: +SKIP
    """
    spec = name if isinstance(name, ClassifierSpec) else ClassifierSpec(name, in_channels, pretrained, drop_rate)
    if spec.name not in CLASSIFIERS:
        raise unknown_name("classifier", spec.name, list_classifiers())
    weights = resolve_pretrained_path(spec.pretrained) if load_pretrained else None
    if spec.name == "cnn_small":
        backbone: nn.Module = SmallCNN(spec.in_channels, spec.drop_rate)
    else:
        import timm

        backbone = timm.create_model(spec.name, pretrained=False, in_chans=spec.in_channels, num_classes=1,
                                     drop_rate=spec.drop_rate)
    clf = PresenceClassifier(spec, backbone)
    if weights is not None:
        clf.pretrained_report = load_local_weights(backbone, weights)
    return clf
