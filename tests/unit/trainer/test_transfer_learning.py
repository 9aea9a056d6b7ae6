"""Pretrained weights load into a new head size; a frozen backbone stays put."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kiln_api.spec import HyperparametersSpec, ModelSpec, PretrainedSpec
from kiln_trainer.models import ModelError, build_model, load_pretrained
from kiln_trainer.optim import build_optimizer
from torch import nn

MLP = ModelSpec(hidden_units=[16, 8], batch_norm=True)


def saved(tmp_path: Path, spec: ModelSpec, shape: tuple[int, ...], classes: int, wrap: str | None = None) -> tuple[nn.Module, Path]:
    torch.manual_seed(1)
    model = build_model(spec, shape, classes)
    state = model.state_dict()
    if wrap == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "checkpoint":
        state = {"model_state_dict": state, "epoch": 3}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return model, path


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("wrap", [None, "ddp", "checkpoint"])
def test_backbone_loads_into_a_model_with_another_number_of_classes(tmp_path: Path, wrap: str | None) -> None:
    source, path = saved(tmp_path, MLP, (6,), 10, wrap)
    torch.manual_seed(2)
    target = build_model(MLP, (6,), 3)
    load_pretrained(target, PretrainedSpec(path=str(path)))
    assert same(target.backbone, source.backbone)
    assert target.head.weight.shape == (3, 8)


def test_frozen_backbone_does_not_move_but_the_head_does(tmp_path: Path) -> None:
    source, path = saved(tmp_path, MLP, (6,), 10)
    target = build_model(MLP, (6,), 3)
    load_pretrained(target, PretrainedSpec(path=str(path), freeze_backbone=True))
    head_before = target.head.weight.detach().clone()
    optimizer = build_optimizer(target, HyperparametersSpec(optimizer="sgd", learning_rate=0.1))
    assert len(optimizer.param_groups[0]["params"]) == 2  # head weight and bias only
    target.train()
    loss = nn.functional.cross_entropy(target(torch.randn(8, 6)), torch.randint(0, 3, (8,)))
    loss.backward()
    optimizer.step()
    assert same(target.backbone, source.backbone)  # weights and batch-norm statistics
    assert not torch.equal(target.head.weight, head_before)


def test_matching_head_is_kept(tmp_path: Path) -> None:
    source, path = saved(tmp_path, MLP, (6,), 4)
    target = build_model(MLP, (6,), 4)
    load_pretrained(target, PretrainedSpec(path=str(path)))
    assert same(target, source)


def test_plain_torchvision_style_resnet_weights_load(tmp_path: Path) -> None:
    spec = ModelSpec(architecture="resnet18")
    source = build_model(spec, (1, 8, 8), 10)
    # A bare ResNet's state dict: backbone keys without prefix, its classifier under fc.*
    bare = {k.removeprefix("backbone."): v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    bare |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(bare, tmp_path / "r.pt")
    target = build_model(spec, (1, 8, 8), 5)
    load_pretrained(target, PretrainedSpec(path=str(tmp_path / "r.pt"), freeze_backbone=True))
    assert same(target.backbone, source.backbone)
    assert not any(p.requires_grad for p in target.backbone.parameters()) and target.head.weight.requires_grad


def test_weights_from_a_pvc_path(tmp_path: Path) -> None:
    source, path = saved(tmp_path, MLP, (6,), 10)
    (tmp_path / "pvc" / "models").mkdir(parents=True)
    path.rename(tmp_path / "pvc" / "models" / "w.pt")
    target = build_model(MLP, (6,), 2)
    load_pretrained(target, PretrainedSpec(path="pvc://models/w.pt"), pvc_root=str(tmp_path / "pvc"))
    assert same(target.backbone, source.backbone)


@pytest.mark.parametrize(
    ("saved_spec", "words"),
    [
        (ModelSpec(architecture="cnn", hidden_units=[4]), "none of the model's"),
        (ModelSpec(hidden_units=[32, 8], batch_norm=True), "of another shape"),
        (ModelSpec(hidden_units=[16, 8]), "missing"),  # no batch norm tensors
    ],
)
def test_weights_of_another_architecture_are_refused(tmp_path: Path, saved_spec: ModelSpec, words: str) -> None:
    shape = (1, 8, 8) if saved_spec.architecture.value == "cnn" else (6,)
    _, path = saved(tmp_path, saved_spec, shape, 10)
    with pytest.raises(ModelError) as info:
        load_pretrained(build_model(MLP, (6,), 3), PretrainedSpec(path=str(path)))
    assert info.value.field == "spec.model.pretrained.path" and words in info.value.message


@pytest.mark.parametrize("content", [None, b"not a pickle", "tensor"])
def test_missing_or_unusable_files_name_the_field(tmp_path: Path, content: bytes | str | None) -> None:
    path = tmp_path / "w.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_pretrained(build_model(MLP, (6,), 3), PretrainedSpec(path=str(path)))
    assert info.value.field == "spec.model.pretrained.path" and str(path) in info.value.message
