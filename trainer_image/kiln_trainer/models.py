"""Built-in models: every one is a `KilnModel` with a `backbone` and a replaceable `head`.

ResNets come from torchvision (weights=None) where it imports, otherwise from
`resnets.py`, which has the same layout and parameter names: a torchvision build whose
compiled ops do not match the installed torch (a CUDA torchvision next to a CPU torch)
cannot even be imported.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections.abc import Callable

import torch
from kiln_api.spec import SEQUENCE_ARCHITECTURES, Activation, ModelSpec, PretrainedSpec
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from torch import nn

from .data.errors import SpecError
from .resnets import resnet as builtin_resnet
from .sequence_models import sequence_backbone
from .storage import exists, open_file, resolve_location

log = logging.getLogger(__name__)

ACTIVATIONS: dict[Activation, Callable[[], nn.Module]] = {
    Activation.relu: nn.ReLU,
    Activation.leaky_relu: lambda: nn.LeakyReLU(0.01),
    Activation.gelu: nn.GELU,
    Activation.silu: nn.SiLU,
    Activation.tanh: nn.Tanh,
    Activation.sigmoid: nn.Sigmoid,
}
# Below this side length the ImageNet stem (7x7 stride 2 + max pool) would shrink images to nothing.
SMALL_IMAGE = 64
STATE_DICT_KEYS = ("model_state_dict", "model", "state_dict")


class ModelError(SpecError):
    """`spec.model` cannot be built or its pretrained weights cannot be loaded."""


class KilnModel(nn.Module):
    """backbone -> head. Freezing the backbone also keeps its batch-norm statistics fixed."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def freeze_backbone(self) -> None:
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        self.backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> KilnModel:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # running statistics are part of what "frozen" keeps
        return self


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int, *, vocab_size: int = 0) -> KilnModel:
    """The architecture `spec` names, sized for `input_shape` samples and `output_dim` outputs.

    `vocab_size` > 0: samples are token ids (text data; DataBundle.inference["vocab_size"])."""
    arch = spec.architecture.value
    if arch in SEQUENCE_ARCHITECTURES:
        backbone = sequence_backbone(spec, input_shape, vocab_size)
        return KilnModel(backbone, _sequence_head(backbone.out_features, spec.dropout, output_dim))
    if vocab_size > 0:
        raise ModelError("spec.model.architecture", f"{arch} cannot read token ids; use lstm, gru or transformer")
    if arch == "mlp":
        return _mlp(spec, input_shape, output_dim)
    if len(input_shape) != 3:
        raise ModelError(
            "spec.model.architecture",
            f"{arch} needs image input (channels, height, width), but the data has shape {tuple(input_shape)}; use mlp",
        )
    if arch == "cnn":
        return _cnn(spec, input_shape, output_dim)
    return _resnet(arch, input_shape, output_dim)


def _sequence_head(width: int, dropout: float, output_dim: int) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, output_dim)) if dropout else nn.Linear(width, output_dim)


def _mlp(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> KilnModel:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for units in spec.hidden_units:
        layers.append(nn.Linear(width, units))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(units))
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = units
    return KilnModel(nn.Sequential(*layers), nn.Linear(width, output_dim))


def _cnn(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> KilnModel:
    """3x3 conv blocks; halve the resolution after a block while it is at least 8 pixels."""
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for units in spec.hidden_units:
        layers.append(nn.Conv2d(channels, units, 3, padding=1, bias=not spec.batch_norm))
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(units))
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        if min(height, width) >= 8:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = units
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return KilnModel(nn.Sequential(*layers), nn.Linear(channels, output_dim))


def _resnet(arch: str, input_shape: tuple[int, ...], output_dim: int) -> KilnModel:
    channels, height, width = input_shape
    net = _resnet_factory()(arch)
    small = min(height, width) < SMALL_IMAGE
    if small:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    features = net.fc.in_features
    net.fc = nn.Identity()
    return KilnModel(net, nn.Linear(features, output_dim))


@functools.lru_cache(maxsize=1)
def _resnet_factory() -> Callable[[str], nn.Module]:
    try:
        from torchvision import models as tv_models
    except Exception as exc:  # noqa: BLE001 - a mismatched build raises RuntimeError, not ImportError
        log.info("torchvision unavailable (%s); using the built-in ResNet with the same layout", exc)
        return builtin_resnet
    return lambda arch: getattr(tv_models, arch)(weights=None)


def load_pretrained(model: nn.Module, spec: PretrainedSpec, *, pvc_root: str = PVC_MOUNT_ROOT) -> None:
    """Load saved weights into `model`'s backbone (and its head where shapes fit), then freeze if asked.

    Accepts a bare state dict or a checkpoint dict holding one under model_state_dict /
    model / state_dict; `module.` prefixes from DDP are dropped, and a torchvision-style
    `fc.*` head maps onto `head.*`.
    """
    field = "spec.model.pretrained.path"
    if not isinstance(model, KilnModel):
        raise ModelError(field, "pretrained weights can only be loaded into a built-in model")
    location = resolve_location(spec.path, pvc_root)
    try:
        found = exists(location)
    except (ImportError, OSError) as exc:  # e.g. s3:// without s3fs installed, or no credentials
        raise ModelError(field, f"{spec.path}: cannot reach {location}: {exc}") from exc
    if not found:
        raise ModelError(field, f"{spec.path}: no such file ({location})")
    try:
        with open_file(location, "rb") as handle:
            loaded = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types; all mean "not a weights file"
        raise ModelError(field, f"{spec.path}: not a loadable PyTorch weights file: {exc}") from exc
    state = plan_pretrained_load(model.state_dict(), normalise_state_dict(extract_state_dict(loaded, spec.path)), spec.path)
    model.load_state_dict(state, strict=False)
    if spec.freeze_backbone:
        model.freeze_backbone()


def extract_state_dict(obj: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return extract_state_dict(obj[key], path)
    raise ModelError("spec.model.pretrained.path", f"{path}: holds no state dict (a mapping of names to tensors)")


def normalise_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP's `module.`; name bare keys as KilnModel's backbone.* / head.* (fc.* is a head)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if not key.startswith(("backbone.", "head.")):
            key = "head." + key.removeprefix("fc.") if key.startswith("fc.") else "backbone." + key
        out[key] = value
    return out


def plan_pretrained_load(
    target: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], path: str
) -> dict[str, torch.Tensor]:
    """The tensors to load: every backbone tensor (all must fit), head tensors only where shapes match."""
    field = "spec.model.pretrained.path"
    backbone = [k for k in target if k.startswith("backbone.")]
    missing = [k for k in backbone if k not in loaded]
    mismatched = [k for k in backbone if k in loaded and loaded[k].shape != target[k].shape]
    if len(missing) == len(backbone) and backbone:
        raise ModelError(field, f"{path}: none of the model's {len(backbone)} backbone tensors are in it (e.g. {backbone[0]!r}); was it saved from this architecture?")
    if missing or mismatched:
        shown = ", ".join(
            [f"{k!r} missing" for k in missing[:3]]
            + [f"{k!r} is {tuple(loaded[k].shape)}, model has {tuple(target[k].shape)}" for k in mismatched[:3]]
        )
        raise ModelError(field, f"{path}: {len(missing)} backbone tensors missing and {len(mismatched)} of another shape ({shown}); check spec.model (architecture, hiddenUnits, batchNorm)")
    plan = {k: loaded[k] for k in backbone}
    for key in (k for k in target if k.startswith("head.")):
        if key in loaded and loaded[key].shape == target[key].shape:
            plan[key] = loaded[key]
        else:
            log.info("pretrained: new head tensor %s (saved shape does not fit the task)", key)
    return plan
