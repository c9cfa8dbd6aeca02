"""Tests for engine.models: registry, specs, every custom architecture, smp sample, classifier."""

from __future__ import annotations

import functools
import math
import socket

import pytest
import torch
from torch import nn

from engine.errors import CheckpointError, ConfigError, WorkbenchError
from engine.losses import build_loss, combined_loss
from engine.models import (
    CUSTOM_ARCHITECTURES,
    ClassifierSpec,
    ModelInputError,
    ModelSpec,
    SegmentationNet,
    architecture_info,
    build_classifier,
    build_model,
    count_parameters,
    list_architectures,
    list_classifiers,
    list_encoders,
    model_size_mb,
)

torch.manual_seed(0)

SIZE = 64


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _forward_backward(spec: ModelSpec, n: int = 2, h: int = SIZE, w: int = SIZE,
                      unused: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Build, run one training step's forward/backward with a real loss, check shapes and grads.

    ``unused``: name prefixes of parameters that legitimately get no gradient (smp keeps the
    encoder stages beyond ``encoder_depth``).
    """
    net = build_model(spec)
    net.train()
    x = torch.rand(n, spec.in_channels, h, w)
    target = torch.randint(0, spec.num_classes, (n, h, w))
    target[0] = 0  # one empty image: presence labels 0 and 1 in the batch
    out = net(x)
    assert set(out) == ({"mask", "presence"} if spec.presence_head else {"mask"})
    assert out["mask"].shape == (n, spec.num_classes, h, w)
    assert out["mask"].dtype == torch.float32
    if spec.presence_head:
        assert out["presence"].shape == (n, 1)
    crit = combined_loss(build_loss("bce_dice"), presence_weight=1.0 if spec.presence_head else 0.0)
    parts = crit(out, target)
    assert torch.isfinite(parts["loss"])
    parts["loss"].backward()
    missing = [name for name, p in net.named_parameters()
               if p.requires_grad and p.grad is None and not name.startswith(unused)]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [name for name, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:5]}"
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())
    return out


# ------------------------------------------------------------------------------------- registry


def test_registry_lists_every_smp_architecture_and_the_custom_ones() -> None:
    import segmentation_models_pytorch as smp

    names = list_architectures()
    expected_smp = {k.lower() for k in smp.MODEL_ARCHITECTURES_MAPPING}
    assert expected_smp <= set(names)
    assert {"unet", "unetplusplus", "fpn", "deeplabv3plus", "segformer"} <= expected_smp
    assert {"unet_classic", "cenet", "dilated_fcn", "dilated_fcn_residual", "doubleunet"} <= set(names)
    assert names == sorted(names)
    assert set(architecture_info()) == set(names)
    assert "resnet18" in list_encoders() and "mit_b0" in list_encoders()


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_model(ModelSpec(arch="unet_clasic"))
    text = str(err.value)
    assert "unet_clasic" in text
    for name in ("unet_classic", "cenet", "doubleunet", "unetplusplus", "segformer"):
        assert name in text


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_model(ModelSpec(arch="unet", encoder="resnet19"))
    assert "resnet19" in str(err.value) and "resnet18" in str(err.value) and "mit_b0" in str(err.value)
    with pytest.raises(ConfigError, match="timm"):
        build_model(ModelSpec(arch="unet", encoder="tu-not_a_model_xyz"))


def test_unused_or_unknown_options_are_rejected_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="does not use dropout"):
        build_model(ModelSpec(arch="cenet", base_channels=4, dropout=0.3))
    with pytest.raises(ConfigError) as err:
        build_model(ModelSpec(arch="unet_classic", base_channels=4, extra={"upmode": "bilinear"}))
    assert "up_mode" in str(err.value)
    with pytest.raises(ConfigError, match="up_mode"):
        build_model(ModelSpec(arch="unet_classic", base_channels=4, extra={"up_mode": "nearest"}))
    with pytest.raises(ConfigError) as err:
        build_model(ModelSpec(arch="unet", encoder="resnet18", extra={"decoder_atention": "scse"}))
    assert "decoder_attention_type" in str(err.value)
    with pytest.raises(ConfigError, match="base_channels"):
        build_model(ModelSpec(arch="unet", encoder="resnet18", base_channels=8))
    with pytest.raises(ConfigError, match="one decoder width"):
        build_model(ModelSpec(arch="fpn", encoder="resnet18", decoder_channels=(32, 16)))


# ----------------------------------------------------------------------------------------- spec


def test_model_spec_json_round_trip() -> None:
    spec = ModelSpec(arch="UNet", encoder="resnet18", in_channels=3, num_classes=3, presence_head=True,
                     encoder_depth=4, decoder_channels=(64, 32, 16, 8), dropout=None,
                     extra={"decoder_attention_type": "scse", "nested": {"a": [1, 2]}})
    assert spec.arch == "unet"  # names are normalised to lower case
    text = spec.to_json()
    back = ModelSpec.from_json(text)
    assert back == spec
    assert isinstance(back.decoder_channels, tuple)
    assert ModelSpec.from_dict(spec.to_dict()).to_json() == text
    custom = ModelSpec(arch="dilated_fcn", base_channels=8, dropout=0.25, extra={"rates": [1, 2, 4]})
    assert ModelSpec.from_json(custom.to_json()) == custom


@pytest.mark.parametrize("bad", [{"arch": "unet", "num_classes": 1}, {"arch": "unet", "in_channels": 0},
                                 {"arch": "unet", "dropout": 1.5}, {"arch": "unet", "colour": "red"},
                                 {"encoder": "resnet18"}])
def test_model_spec_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ModelSpec.from_dict(bad)


# ------------------------------------------------------------------------------ custom archs

CUSTOM_CASES = [
    # arch, base, K, C, presence, extra
    ("unet_classic", 4, 2, 1, False, None),
    ("unet_classic", 4, 3, 3, True, {"up_mode": "bilinear"}),
    ("cenet", 4, 2, 1, True, {"blocks": [1, 1, 1, 1]}),
    ("cenet", 4, 3, 3, False, {"blocks": [1, 2, 1, 1]}),
    ("dilated_fcn", 4, 2, 1, True, None),
    ("dilated_fcn", 4, 3, 3, False, {"norm": "batch"}),
    ("dilated_fcn_residual", 4, 2, 1, False, None),
    ("dilated_fcn_residual", 4, 3, 3, True, None),
    ("doubleunet", 8, 2, 1, True, None),
    ("doubleunet", 8, 3, 3, False, {"encoder_bn": False}),
]


def test_every_custom_architecture_is_covered() -> None:
    assert {case[0] for case in CUSTOM_CASES} == set(CUSTOM_ARCHITECTURES)


@pytest.mark.parametrize("arch,base,k,c,presence,extra", CUSTOM_CASES)
def test_custom_forward_backward(arch: str, base: int, k: int, c: int, presence: bool, extra: dict | None) -> None:
    spec = ModelSpec(arch=arch, base_channels=base, num_classes=k, in_channels=c,
                     presence_head=presence, extra=extra)
    _forward_backward(spec)


def test_custom_archs_accept_non_square_sizes() -> None:
    net = build_model(ModelSpec(arch="unet_classic", base_channels=4))
    assert net.size_divisor == 16
    assert net(torch.rand(1, 1, 48, 80))["mask"].shape == (1, 2, 48, 80)
    dil = build_model(ModelSpec(arch="dilated_fcn", base_channels=4, extra={"rates": [1, 2, 3]}))
    assert dil.size_divisor == 1
    assert dil(torch.rand(1, 1, 37, 50))["mask"].shape == (1, 2, 37, 50)
    shallow = build_model(ModelSpec(arch="unet_classic", base_channels=4, encoder_depth=2))
    assert shallow.size_divisor == 4
    assert shallow(torch.rand(1, 1, 20, 12))["mask"].shape == (1, 2, 20, 12)


def test_doubleunet_trains_with_batch_of_one_and_fuses_by_averaging() -> None:
    net = build_model(ModelSpec(arch="doubleunet", base_channels=8, num_classes=3))
    seen: dict[str, torch.Tensor] = {}
    inner = net.net
    inner.out1.register_forward_hook(lambda m, i, o: seen.__setitem__("o1", o))
    inner.out2.register_forward_hook(lambda m, i, o: seen.__setitem__("o2", o))
    net.train()
    out = net(torch.rand(1, 1, 32, 32))["mask"]  # batch of 1 in train mode must not fail
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out, (seen["o1"] + seen["o2"]) / 2)


def test_unet_classic_uses_he_initialisation() -> None:
    net = build_model(ModelSpec(arch="unet_classic", base_channels=32, encoder_depth=2))
    conv = net.net.downs[1][0]  # 3x3 conv, 64 in-channels -> fan_in = 576
    std = float(conv.weight.detach().std())
    assert math.isclose(std, math.sqrt(2 / (64 * 9)), rel_tol=0.1)


def test_cenet_rmp_works_on_tiny_bottleneck() -> None:
    # 32x32 input -> 2x2 bottleneck: RMP kernels 3, 5, 6 are clamped to the map
    net = build_model(ModelSpec(arch="cenet", base_channels=4, extra={"blocks": [1, 1, 1, 1]}, presence_head=True))
    out = net.eval()(torch.rand(2, 1, 32, 32))
    assert out["mask"].shape == (2, 2, 32, 32) and out["presence"].shape == (2, 1)


# ------------------------------------------------------------------------------------- smp archs

SMP_CASES = [
    ModelSpec(arch="unet", encoder="resnet18", in_channels=1, num_classes=2, presence_head=True,
              decoder_channels=(32, 16, 8, 8, 8)),
    ModelSpec(arch="unetplusplus", encoder="resnet18", in_channels=3, num_classes=3,
              encoder_depth=3, decoder_channels=(16, 8, 8)),
    ModelSpec(arch="fpn", encoder="resnet18", in_channels=1, num_classes=3, presence_head=True,
              decoder_channels=(32,), dropout=0.1),
    ModelSpec(arch="deeplabv3plus", encoder="resnet18", in_channels=3, num_classes=2,
              decoder_channels=(32,)),
    ModelSpec(arch="segformer", encoder="mit_b0", in_channels=1, num_classes=2, presence_head=True,
              decoder_channels=(32,)),
]


@pytest.mark.parametrize("spec", SMP_CASES, ids=[f"{s.arch}-{s.encoder}" for s in SMP_CASES])
def test_smp_forward_backward(spec: ModelSpec) -> None:
    depth = spec.encoder_depth or 5
    # resnet stage i (1..5) is conv1 for i = 1, layer{i-1} otherwise
    unused = tuple(f"net.encoder.layer{i - 1}." for i in range(depth + 1, 6))
    _forward_backward(spec, unused=unused)


def test_smp_default_depth_needs_multiple_of_32_and_says_how_to_pad() -> None:
    net = build_model(ModelSpec(arch="linknet", encoder="resnet18"))
    assert net.size_divisor == 32
    with pytest.raises(ModelInputError) as err:
        net(torch.rand(1, 1, 48, 64))
    assert "divisible by 32" in str(err.value) and "64x64" in str(err.value)


# ------------------------------------------------------------------------------------ input checks


@pytest.mark.parametrize("arch,extra", [("unet_classic", {"base_channels": 4}),
                                        ("unet", {"encoder": "resnet18", "encoder_depth": 3,
                                                  "decoder_channels": (16, 8, 8)})])
def test_wrong_channel_count_is_a_clear_error(arch: str, extra: dict) -> None:
    net = build_model(ModelSpec(arch=arch, in_channels=1, **extra))
    with pytest.raises(ModelInputError) as err:
        net(torch.rand(2, 3, SIZE, SIZE))
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    assert isinstance(err.value, WorkbenchError)
    assert "expects 1 input channel(s), got 3" in str(err.value)
    with pytest.raises(ModelInputError, match="batch"):
        net(torch.rand(1, SIZE, SIZE))
    with pytest.raises(ModelInputError, match="float"):
        net(torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8))


# ------------------------------------------------------------------------------------- no downloads


def test_build_never_downloads(no_network: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch as smp

    seen: dict = {}

    class SpyUnet(smp.Unet):
        @functools.wraps(smp.Unet.__init__)
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(smp.MODEL_ARCHITECTURES_MAPPING, "unet", SpyUnet)
    net = build_model(ModelSpec(arch="unet", encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8)))
    assert isinstance(net.net, SpyUnet)
    assert "encoder_weights" in seen and seen["encoder_weights"] is None
    assert net.pretrained_report is None
    build_classifier("resnet18", in_channels=1)


@pytest.mark.parametrize("value", ["imagenet", "https://example.org/resnet18.pth", "ssl", ""])
def test_pretrained_names_that_would_download_are_refused(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        ModelSpec(arch="unet", encoder="resnet18", pretrained=value)
    text = str(err.value)
    assert "download" in text and "local" in text
    with pytest.raises(ConfigError):
        build_classifier("resnet18", pretrained=value)
    with pytest.raises(ConfigError):
        ClassifierSpec.from_dict({"name": "resnet18", "pretrained": value})


def test_pretrained_local_file_loads_into_the_encoder(tmp_path) -> None:
    tiny = {"base_channels": 4, "extra": {"blocks": [1, 1, 1, 1]}}
    donor = build_model(ModelSpec(arch="cenet", in_channels=3, **tiny))
    path = tmp_path / "encoder.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.net.state_dict().items()}}, path)

    same = build_model(ModelSpec(arch="cenet", in_channels=3, pretrained=str(path), **tiny))
    assert same.pretrained_report["loaded"] == len(donor.net.encoder.state_dict())
    torch.testing.assert_close(same.net.encoder.layer2[0].conv1.weight, donor.net.encoder.layer2[0].conv1.weight)

    gray = build_model(ModelSpec(arch="cenet", in_channels=1, pretrained=str(path), **tiny))
    assert gray.pretrained_report["adapted"] == ["conv1.weight"]
    torch.testing.assert_close(gray.net.encoder.conv1.weight,
                               donor.net.encoder.conv1.weight.sum(dim=1, keepdim=True))
    out = gray(torch.rand(1, 1, 32, 32))["mask"]
    assert out.shape == (1, 2, 32, 32)

    with pytest.raises(ConfigError, match="not found"):
        build_model(ModelSpec(arch="cenet", pretrained=str(tmp_path / "missing.pth"), **tiny))
    # a checkpoint load builds without the file
    build_model(ModelSpec(arch="cenet", pretrained=str(tmp_path / "missing.pth"), **tiny), load_pretrained=False)
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        build_model(ModelSpec(arch="unet_classic", base_channels=4, pretrained=str(path)))
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError):
        build_model(ModelSpec(arch="cenet", pretrained=str(other), **tiny))


# --------------------------------------------------------------------------------------- classifier


def test_classifier_registry_and_forward_backward() -> None:
    assert {"densenet121", "resnet18", "efficientnet_b0"} <= set(list_classifiers())
    clf = build_classifier("mobilenetv3_small_100", in_channels=1)
    x = torch.rand(2, 1, SIZE, SIZE)
    logits = clf(x)
    assert logits.shape == (2, 1)
    torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), torch.tensor([0.0, 1.0])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in clf.parameters() if p.requires_grad)
    with pytest.raises(ModelInputError, match="expects \\(N,1,H,W\\)"):
        clf(torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(ConfigError) as err:
        build_classifier("densenet12")
    assert "densenet121" in str(err.value)
    assert ClassifierSpec.from_json(clf.spec.to_json()) == clf.spec


def test_default_classifier_is_densenet121_with_one_logit() -> None:
    clf = build_classifier()
    assert clf.spec.name == "densenet121" and clf.spec.in_channels == 1
    assert clf.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 1)


# -------------------------------------------------------------------------------------------- sizes


def test_count_parameters_and_size() -> None:
    conv = nn.Conv2d(1, 2, 3)  # 2*1*3*3 + 2
    assert count_parameters(conv) == 20
    assert model_size_mb(conv) == pytest.approx(20 * 4 / 2 ** 20)
    block = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.BatchNorm2d(4))
    block[0].weight.requires_grad_(False)
    assert count_parameters(block) == 12 and count_parameters(block, trainable_only=True) == 8
    # BN running mean/var are saved too (4 + 4 floats); num_batches_tracked is not counted
    assert model_size_mb(block) == pytest.approx((12 + 8) * 4 / 2 ** 20)
    small = build_model(ModelSpec(arch="unet_classic", base_channels=8))
    bigger = build_model(ModelSpec(arch="unet_classic", base_channels=16))
    assert 3.5 < count_parameters(bigger) / count_parameters(small) < 4.5  # width x2 -> ~4x weights
    assert isinstance(small, SegmentationNet)
