"""Every architecture builds for its inputs and exposes a replaceable head."""

from __future__ import annotations

import pytest
import torch
from kiln_api.spec import DataSpec, ModelSpec
from kiln_trainer.data import load_data
from kiln_trainer.models import KilnModel, ModelError, build_model
from kiln_trainer.resnets import resnet
from torch import nn


@pytest.mark.parametrize(
    ("model", "input_shape"),
    [
        ({"architecture": "mlp"}, (64,)),
        ({"architecture": "mlp", "hiddenUnits": [16], "batchNorm": True, "dropout": 0.2, "activation": "gelu"}, (4,)),
        ({"architecture": "mlp", "hiddenUnits": [8, 8], "activation": "tanh"}, (1, 8, 8)),
        ({"architecture": "cnn"}, (1, 8, 8)),
        ({"architecture": "cnn", "hiddenUnits": [8, 16, 32], "batchNorm": True, "dropout": 0.1, "activation": "silu"}, (3, 32, 32)),
        ({"architecture": "resnet18"}, (1, 8, 8)),
        ({"architecture": "resnet34"}, (3, 16, 16)),
        ({"architecture": "resnet50"}, (1, 8, 8)),
        ({"architecture": "resnet18"}, (3, 64, 64)),
        ({"architecture": "resnet18"}, (1, 64, 64)),
    ],
)
def test_forward_pass_gives_batch_by_output_dim(model: dict, input_shape: tuple[int, ...]) -> None:
    net = build_model(ModelSpec.model_validate(model), input_shape, 7)
    assert isinstance(net, KilnModel) and isinstance(net.head, nn.Linear) and net.head.out_features == 7
    net.train()
    out = net(torch.randn(3, *input_shape))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(("arch", "rows", "steps"), [("mlp", 64, 30), ("cnn", 64, 30), ("resnet18", 16, 8)])
def test_models_learn_digits(arch: str, rows: int, steps: int) -> None:
    bundle = load_data(DataSpec(source="builtin:digits"), for_architecture=arch)
    torch.manual_seed(0)
    spec = ModelSpec(architecture=arch, hidden_units=[32, 32])
    net = build_model(spec, bundle.input_shape, bundle.output_dim)
    x, y = bundle.train.x[:rows], bundle.train.y[:rows]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2 if arch != "resnet18" else 1e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.5


def test_small_images_get_a_small_stem_and_no_max_pool() -> None:
    net = build_model(ModelSpec(architecture="resnet18"), (1, 8, 8), 10)
    assert net.backbone.conv1.in_channels == 1 and net.backbone.conv1.kernel_size == (3, 3)
    assert isinstance(net.backbone.maxpool, nn.Identity)
    big = build_model(ModelSpec(architecture="resnet18"), (1, 96, 96), 10)
    assert big.backbone.conv1.kernel_size == (7, 7) and big.backbone.conv1.in_channels == 1
    assert isinstance(big.backbone.maxpool, nn.MaxPool2d)


def test_builtin_resnet_keeps_the_torchvision_layout() -> None:
    # torchvision's resnet50 has 161 parameter tensors and 25,557,032 parameters; resnet18 11,689,512.
    assert sum(p.numel() for p in resnet("resnet18").parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet("resnet50").parameters()) == 25_557_032
    keys = resnet("resnet18").state_dict().keys()
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "fc.weight"} <= set(keys)


def test_convolutional_models_refuse_tables() -> None:
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec(architecture="cnn"), (4,), 3)
    assert info.value.field == "spec.model.architecture" and "use mlp" in info.value.message


def test_mlp_layers_follow_the_spec() -> None:
    net = build_model(ModelSpec(hidden_units=[5, 3], batch_norm=True, dropout=0.5), (4,), 2)
    kinds = [type(m).__name__ for m in net.backbone]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout"]
    assert [m.out_features for m in net.backbone if isinstance(m, nn.Linear)] == [5, 3]
