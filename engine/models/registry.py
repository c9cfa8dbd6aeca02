"""Architecture registry and the one factory, :func:`build_model`.

Two families share one namespace of lower-case names:

- every architecture of segmentation-models-pytorch (smp) 0.6.0, read from
  ``smp.MODEL_ARCHITECTURES_MAPPING`` at run time (unet, unetplusplus, manet, linknet, fpn,
  pspnet, deeplabv3, deeplabv3plus, pan, upernet, segformer, dpt), always built with
  ``encoder_weights=None`` and any smp encoder (``list_encoders()``) or ``"tu-<timm model>"``.
  Input H and W must be multiples of the encoder's output stride (32 for the usual depth-5
  encoders), except for smp's ``unet``, which declares that it takes any size
  (``requires_divisible_input_shape = False``; padding to 32 is still the better choice).
  PAN needs inputs of at least 128 px; DPT needs a ViT ``tu-`` encoder. Note that smp keeps the
  unused deeper encoder stages when ``encoder_depth < 5`` (their weights get no gradient and
  still count in the model size).
- custom architectures written from the papers: ``unet_classic``, ``cenet``, ``dilated_fcn``,
  ``dilated_fcn_residual``, ``doubleunet`` (H, W multiples of 16, or of 2**depth for
  ``unet_classic``; ``dilated_fcn*`` take any size).

``net.size_divisor`` tells the caller how to pad. Weights are random unless
``spec.pretrained`` is a local file (nothing is downloaded, ever).

Example:
    >>> from engine.models import ModelSpec, build_model, count_parameters
    >>> net = build_model(ModelSpec(arch="unet", encoder="resnet18", in_channels=1, num_classes=2))
    >>> net(torch.rand(1, 1, 64, 64))["mask"].shape
    torch.Size([1, 2, 64, 64])
    >>> count_parameters(net) > 0
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from engine.errors import ConfigError, unknown_name
from engine.models.heads import CustomSegModel, PresenceHead
from engine.models.net import SegmentationNet
from engine.models.pretrained import load_local_weights, resolve_pretrained_path
from engine.models.spec import ModelSpec

# ---------------------------------------------------------------------------------- custom archs


@dataclass(frozen=True)
class _CustomArch:
    build: Callable[[ModelSpec, dict[str, Any]], CustomSegModel]
    description: str
    fields: frozenset[str]  # which generic ModelSpec fields the arch uses
    extra: dict[str, Any] = field(default_factory=dict)  # allowed extra keys -> defaults


def _int_list(value: Any, name: str, length: int | None = None) -> list[int]:
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"option '{name}' must be a list of integers, got {value!r}") from None
    if not out or min(out) < 1 or (length is not None and len(out) != length):
        size = f"{length} " if length else ""
        raise ConfigError(f"option '{name}' must be a list of {size}positive integers, got {value!r}")
    return out


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"option '{name}' must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _build_unet_classic(spec: ModelSpec, opts: dict[str, Any]) -> CustomSegModel:
    from engine.models.unet_classic import UP_MODES, UNetClassic

    depth = spec.encoder_depth or 4
    if not 1 <= depth <= 6:
        raise ConfigError(f"unet_classic encoder_depth (number of levels) must be 1..6, got {depth}")
    return UNetClassic(spec.in_channels, spec.num_classes, spec.base_channels or 64, depth,
                       _choice(opts["up_mode"], "up_mode", UP_MODES), spec.dropout or 0.0)


def _build_cenet(spec: ModelSpec, opts: dict[str, Any]) -> CustomSegModel:
    from engine.models.cenet import CENet

    return CENet(spec.in_channels, spec.num_classes, spec.base_channels or 64,
                 _int_list(opts["blocks"], "blocks", 4))


def _dilated(residual: bool) -> Callable[[ModelSpec, dict[str, Any]], CustomSegModel]:
    def build(spec: ModelSpec, opts: dict[str, Any]) -> CustomSegModel:
        from engine.models.dilated_fcn import NORMS, DilatedFCN

        dropout = spec.dropout if spec.dropout is not None else (0.0 if residual else 0.5)
        return DilatedFCN(spec.in_channels, spec.num_classes, spec.base_channels or 32,
                          _int_list(opts["rates"], "rates"), dropout, residual,
                          _choice(opts["norm"], "norm", NORMS),
                          [int(c) for c in opts["head_channels"]])
    return build


def _build_doubleunet(spec: ModelSpec, opts: dict[str, Any]) -> CustomSegModel:
    from engine.models.doubleunet import DoubleUNet

    return DoubleUNet(spec.in_channels, spec.num_classes, spec.base_channels or 64,
                      bool(opts["encoder_bn"]))


_DILATED_EXTRA = {"rates": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55], "norm": "instance", "head_channels": [128, 32]}

CUSTOM_ARCHITECTURES: dict[str, _CustomArch] = {
    "unet_classic": _CustomArch(
        _build_unet_classic, "original U-Net (Ronneberger 2015) with BatchNorm, padded convs, He init",
        frozenset({"base_channels", "encoder_depth", "dropout"}), {"up_mode": "transpose"}),
    "cenet": _CustomArch(
        _build_cenet, "CE-Net (Gu 2019): ResNet-34-like encoder + DAC + RMP context blocks",
        frozenset({"base_channels"}), {"blocks": [3, 4, 6, 3]}),
    "dilated_fcn": _CustomArch(
        _dilated(False), "dilated FCN (Anthimopoulos 2018): 10 dilated convs, concat, dropout, 1x1 convs",
        frozenset({"base_channels", "dropout"}), dict(_DILATED_EXTRA)),
    "dilated_fcn_residual": _CustomArch(
        _dilated(True), "dilated FCN with a residual connection per layer and no dropout (train with mse)",
        frozenset({"base_channels", "dropout"}), dict(_DILATED_EXTRA)),
    "doubleunet": _CustomArch(
        _build_doubleunet, "DoubleU-Net (Jha 2020): VGG-19 U-Net + ASPP, gated second U-Net",
        frozenset({"base_channels"}), {"encoder_bn": True}),
}

_GENERIC_FIELDS = ("base_channels", "encoder_depth", "decoder_channels", "dropout")


def _custom_options(name: str, arch: _CustomArch, spec: ModelSpec) -> dict[str, Any]:
    for f in _GENERIC_FIELDS:
        if getattr(spec, f) is not None and f not in arch.fields:
            used = ", ".join(sorted(arch.fields)) or "none"
            raise ConfigError(f"architecture '{name}' does not use {f}",
                              hint=f"leave {f} empty; options it uses: {used}; extra: "
                                   f"{', '.join(sorted(arch.extra)) or 'none'}")
    opts = spec.options
    unknown = sorted(set(opts) - set(arch.extra))
    if unknown:
        raise ConfigError(f"architecture '{name}' has no extra option(s) {', '.join(unknown)}",
                          hint=f"valid extra options: {', '.join(sorted(arch.extra)) or 'none'}")
    return {**arch.extra, **opts}


# ------------------------------------------------------------------------------------- smp archs

#: smp constructor arguments the factory controls itself (not settable through ``extra``).
_SMP_CONTROLLED = {"self", "kwargs", "encoder_name", "encoder_weights", "in_channels", "classes",
                   "aux_params", "activation"}
_SMP_DECODER_PARAMS = ("decoder_channels", "decoder_pyramid_channels", "decoder_segmentation_channels",
                       "psp_out_channels", "decoder_intermediate_channels")
_SMP_DROPOUT_PARAMS = ("decoder_dropout", "psp_dropout", "decoder_aspp_dropout")


def _smp() -> Any:
    import segmentation_models_pytorch as smp

    return smp


def _smp_architectures() -> dict[str, type[nn.Module]]:
    return {k.lower(): v for k, v in _smp().MODEL_ARCHITECTURES_MAPPING.items()}


def list_encoders() -> list[str]:
    """smp's encoder names (``"tu-<timm model>"`` is accepted too), sorted."""
    return sorted(_smp().encoders.get_encoder_names())


def check_encoder(name: str) -> None:
    """Raise :class:`ConfigError` (listing valid names) unless ``name`` is a known encoder."""
    if name in set(_smp().encoders.get_encoder_names()):
        return
    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return
        raise ConfigError(f"unknown timm encoder '{name}'",
                          hint="use 'tu-' + a name from timm.list_models(), e.g. tu-resnet18, "
                               "or one of smp's encoders (engine.models.list_encoders())")
    raise unknown_name("encoder", name, list_encoders() + ["tu-<timm model>"])


def _build_smp(spec: ModelSpec, cls: type[nn.Module]) -> tuple[nn.Module, int]:
    params = inspect.signature(cls.__init__).parameters
    encoder = spec.encoder or params["encoder_name"].default
    check_encoder(encoder)
    kwargs: dict[str, Any] = {"encoder_name": encoder, "encoder_weights": None,
                              "in_channels": spec.in_channels, "classes": spec.num_classes}
    if spec.base_channels is not None:
        raise ConfigError(f"smp architecture '{spec.arch}' does not use base_channels",
                          hint="choose the width through encoder and decoder_channels")
    if spec.encoder_depth is not None:
        kwargs["encoder_depth"] = spec.encoder_depth
    if spec.decoder_channels is not None:
        pname = next((p for p in _SMP_DECODER_PARAMS if p in params), None)
        if pname is None:
            raise ConfigError(f"smp architecture '{spec.arch}' has no decoder width option",
                              hint="leave decoder_channels empty")
        if isinstance(params[pname].default, int):
            if len(spec.decoder_channels) != 1:
                raise ConfigError(f"'{spec.arch}' takes one decoder width ({pname}), "
                                  f"got {list(spec.decoder_channels)}",
                                  hint="give a single value, e.g. decoder_channels=[128]")
            kwargs[pname] = spec.decoder_channels[0]
        else:
            kwargs[pname] = tuple(spec.decoder_channels)
    if spec.dropout is not None:
        pname = next((p for p in _SMP_DROPOUT_PARAMS if p in params), None)
        if pname is None:
            raise ConfigError(f"smp architecture '{spec.arch}' has no dropout option",
                              hint="leave dropout empty (presence_dropout sets the presence head's)")
        kwargs[pname] = float(spec.dropout)
    allowed = sorted(set(params) - _SMP_CONTROLLED)
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise ConfigError(f"smp architecture '{spec.arch}' has no option(s) {', '.join(unknown)}",
                          hint=f"valid extra options: {', '.join(allowed)}")
    kwargs.update(spec.options)
    if spec.presence_head:
        kwargs["aux_params"] = {"classes": 1, "dropout": spec.presence_dropout, "pooling": "avg"}
    try:
        net = cls(**kwargs)
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        raise ConfigError(f"smp cannot build '{spec.arch}' with encoder '{encoder}': {exc}",
                          hint="check the encoder/architecture combination and the options") from None
    divisor = int(getattr(net.encoder, "output_stride", 32)) if getattr(
        net, "requires_divisible_input_shape", True) else 1
    return net, divisor


# ------------------------------------------------------------------------------------ public API


def list_architectures() -> list[str]:
    """All architecture names, sorted (smp's plus the custom ones)."""
    return sorted(set(_smp_architectures()) | set(CUSTOM_ARCHITECTURES))


def architecture_info() -> dict[str, str]:
    """Name -> one-line description, for pickers and model cards."""
    info = {name: f"{cls.__name__} from segmentation-models-pytorch (any smp encoder, random init)"
            for name, cls in _smp_architectures().items()}
    info.update({name: a.description for name, a in CUSTOM_ARCHITECTURES.items()})
    return dict(sorted(info.items()))


def is_custom(arch: str) -> bool:
    """True for the hand-written architectures (``encoder`` is ignored by them)."""
    return arch.lower() in CUSTOM_ARCHITECTURES


def build_model(spec: ModelSpec, *, load_pretrained: bool = True) -> SegmentationNet:
    """Build the network described by ``spec``, randomly initialised (never downloads).

    Args:
        spec: what to build.
        load_pretrained: load ``spec.pretrained`` (a local encoder weights file) when set. Pass
            False when a full checkpoint is loaded right after, so the file need not exist.

    Returns:
        :class:`SegmentationNet`; ``net(x)`` returns ``{"mask": (N,K,H,W)[, "presence": (N,1)]}``.

    Raises:
        ConfigError: unknown architecture/encoder (listing valid names), options the
            architecture does not use, or a pretrained value that is not a local file.

    Example:
        >>> net = build_model(ModelSpec(arch="cenet", base_channels=16, num_classes=3))
        >>> net(torch.rand(2, 1, 64, 64))["mask"].shape
        torch.Size([2, 3, 64, 64])
    """
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"build_model needs a ModelSpec, got {type(spec).__name__}",
                          hint="use ModelSpec(arch=...) or ModelSpec.from_dict(card['model'])")
    name = spec.arch
    weights_path = resolve_pretrained_path(spec.pretrained) if load_pretrained else None
    if name in CUSTOM_ARCHITECTURES:
        arch = CUSTOM_ARCHITECTURES[name]
        custom = arch.build(spec, _custom_options(name, arch, spec))
        presence = PresenceHead(custom.bottleneck_channels, spec.presence_dropout) if spec.presence_head else None
        net = SegmentationNet(spec, custom, size_divisor=custom.size_divisor, presence=presence)
        target = custom.pretrained_target()
    else:
        smp_archs = _smp_architectures()
        if name not in smp_archs:
            raise unknown_name("architecture", name, list_architectures())
        inner, divisor = _build_smp(spec, smp_archs[name])
        net = SegmentationNet(spec, inner, size_divisor=divisor, smp_presence=spec.presence_head)
        target = cast(nn.Module, inner.encoder)  # every smp model has an encoder submodule
    if weights_path is not None:
        if target is None:
            raise ConfigError(f"architecture '{name}' has no pretrained encoder to load",
                              hint="leave pretrained empty; to continue from a trained model load its checkpoint")
        net.pretrained_report = load_local_weights(target, weights_path)
    return net


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_mb(model: nn.Module) -> float:
    """Size of the saved fp32 weights in MiB (2**20 bytes): float parameters and buffers x 4 bytes.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are left out; they are negligible.
    """
    n = sum(t.numel() for t in model.state_dict().values() if torch.is_floating_point(t))
    return n * 4 / 2 ** 20
