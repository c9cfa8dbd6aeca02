"""Segmentation architectures: one spec, one factory, one output convention.

Every model returns a dict ``{"mask": logits (N,K,H,W)}`` (K includes background; softmax over
dim 1) plus ``"presence": logits (N,1)`` when built with ``presence_head=True``.

Example:
    >>> import torch
    >>> from engine.models import ModelSpec, build_model, list_architectures
    >>> "cenet" in list_architectures()
    True
    >>> net = build_model(ModelSpec(arch="unet", encoder="resnet18", num_classes=2))
    >>> net(torch.rand(1, 1, 64, 64))["mask"].shape
    torch.Size([1, 2, 64, 64])
"""

from engine.models.classifier import (
    CLASSIFIERS,
    ClassifierSpec,
    PresenceClassifier,
    build_classifier,
    list_classifiers,
)
from engine.models.heads import CustomSegModel, PresenceHead
from engine.models.net import ModelInputError, SegmentationNet
from engine.models.pretrained import load_local_weights
from engine.models.registry import (
    CUSTOM_ARCHITECTURES,
    architecture_info,
    build_model,
    check_encoder,
    count_parameters,
    is_custom,
    list_architectures,
    list_encoders,
    model_size_mb,
)
from engine.models.spec import ModelSpec

__all__ = [
    "CLASSIFIERS", "CUSTOM_ARCHITECTURES", "ClassifierSpec", "CustomSegModel", "ModelInputError",
    "ModelSpec", "PresenceClassifier", "PresenceHead", "SegmentationNet", "architecture_info",
    "build_classifier", "build_model", "check_encoder", "count_parameters", "is_custom",
    "list_architectures", "list_classifiers", "list_encoders", "load_local_weights", "model_size_mb",
]
