"""Loading LOCAL pretrained encoder weights (the only opt-in; nothing is ever downloaded).

A user who is online may download e.g. torchvision's ``resnet34`` or an smp encoder state dict
themselves and pass its path as ``ModelSpec.pretrained``. :func:`load_local_weights` matches
the file's tensors to a module by name (whatever common prefix the file uses, e.g.
``module.``, ``encoder.``, ``model.``), adapts the first conv to a different number of input
channels the way smp does (sum for 1 channel, cyclic repeat and rescale otherwise), and
skips tensors whose shapes do not match (e.g. an ImageNet classifier ``fc``).

Example:
    >>> report = load_local_weights(net.encoder, "~/weights/resnet34.pth")  # doctest: +SKIP
    >>> report["loaded"], report["skipped"]                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import CheckpointError, ConfigError
from engine.models.spec import check_pretrained_value


def resolve_pretrained_path(value: str | None) -> Path | None:
    """Validate ``ModelSpec.pretrained`` and return the local file, or None for random init.

    Raises:
        ConfigError: the value names a download (``"imagenet"``, a URL) or the file is missing.
    """
    check_pretrained_value(value)
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError("pretrained weights file not found", path=path,
                          hint="give the path of a local .safetensors/.pth file, or leave pretrained "
                               "empty for random initialisation; nothing is downloaded at run time")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (tensors only, ``weights_only``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file for the user
        raise CheckpointError(f"cannot read weights ({type(exc).__name__}: {exc})", path=path,
                              hint="use a .safetensors file or a torch state dict saved with torch.save") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError("file does not hold a state dict", path=path,
                              hint="save the encoder with torch.save(module.state_dict(), path)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _adapt_in_channels(src: torch.Tensor, target_in: int) -> torch.Tensor:
    """Adapt a conv weight (out, in, k, k) to ``target_in`` input channels (smp's recipe)."""
    if target_in == 1:
        return src.sum(dim=1, keepdim=True)
    reps = -(-target_in // src.shape[1])
    return src.repeat(1, reps, 1, 1)[:, :target_in] * (src.shape[1] / target_in)


def load_local_weights(module: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy matching tensors from a local weights file into ``module``.

    Returns:
        ``{"path", "loaded": int, "adapted": [names], "skipped": [names], "missing": [names]}``.

    Raises:
        CheckpointError: unreadable file, or no tensor in it matches the module.
    """
    path = Path(path)
    source = read_state_dict(path)
    target = module.state_dict()
    prefixes: Counter[str] = Counter()
    for key in source:  # the longest target name each source name ends with gives its prefix
        best = max((t for t in target if key.endswith(t) and (len(key) == len(t) or key[-len(t) - 1] == ".")),
                   key=len, default=None)
        if best is not None:
            prefixes[key[: len(key) - len(best)]] += 1
    if not prefixes:
        raise CheckpointError("no tensor in the weights file matches this model's encoder", path=path,
                              hint="use weights saved from the same encoder architecture and width")
    prefix = prefixes.most_common(1)[0][0]
    new_state: dict[str, torch.Tensor] = {}
    adapted, skipped = [], []
    for key, value in source.items():
        if not key.startswith(prefix):
            continue
        tkey = key[len(prefix):]
        if tkey not in target:
            skipped.append(key)
            continue
        want = target[tkey]
        if value.shape == want.shape:
            new_state[tkey] = value.to(want.dtype)
        elif value.ndim == 4 and want.ndim == 4 and value.shape[0] == want.shape[0] \
                and value.shape[2:] == want.shape[2:]:
            new_state[tkey] = _adapt_in_channels(value.to(want.dtype), want.shape[1])
            adapted.append(tkey)
        else:
            skipped.append(key)
    if not new_state:
        raise CheckpointError("no tensor in the weights file has the shape this encoder needs", path=path,
                              hint="check the encoder name and width (base_channels) match the file")
    module.load_state_dict(new_state, strict=False)
    missing = sorted(k for k in target if k not in new_state)
    return {"path": str(path), "loaded": len(new_state), "adapted": adapted,
            "skipped": skipped, "missing": missing}
