"""Which speed-ups a job gets (pure), how they are applied, and the torch.compile switch with its fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from kiln_api.spec import HyperparametersSpec
from kiln_trainer import optim
from kiln_trainer.builtin_run import run_training
from kiln_trainer.model_trainer import ModelTrainer
from kiln_trainer.speedups import (
    CompiledForward,
    Speedups,
    apply_backend_flags,
    compile_unavailable,
    forward_of,
    select_speedups,
    use_fused_optimizer,
)
from kiln_trainer.worker import RunPaths, WorkerEnv

from tests.support.trainer_helpers import job

NONE = Speedups()


@pytest.mark.parametrize(
    ("device", "precision", "architecture", "optimizer", "expected"),
    [
        ("cuda", "none", "mlp", "adamw", Speedups(fused_optimizer=True, tf32=True)),
        ("cuda", "bf16", "mlp", "adam", Speedups(fused_optimizer=True)),
        ("cuda", "fp16", "mlp", "sgd", Speedups(fused_optimizer=True)),
        ("cuda", "none", "mlp", "rmsprop", Speedups(tf32=True)),
        ("cuda", "bf16", "mlp", "adagrad", NONE),
        ("cuda", "none", "cnn", "sgd", Speedups(fused_optimizer=True, tf32=True, channels_last=True, cudnn_benchmark=True)),
        ("cuda", "bf16", "resnet18", "adamw", Speedups(fused_optimizer=True, channels_last=True, cudnn_benchmark=True)),
        ("cuda", "fp16", "resnet50", "rmsprop", Speedups(channels_last=True, cudnn_benchmark=True)),
        ("cpu", "none", "mlp", "adamw", NONE),
        ("cpu", "bf16", "resnet18", "adamw", NONE),
        ("cpu", "none", "cnn", "sgd", NONE),
    ],
)
def test_speedup_selection(device, precision, architecture, optimizer, expected) -> None:
    assert select_speedups(device, precision, architecture, optimizer) == expected


def test_fused_kernels_only_when_every_parameter_is_on_cuda() -> None:
    cpu_params = list(torch.nn.Linear(2, 2).parameters())
    assert not use_fused_optimizer(Speedups(fused_optimizer=True), cpu_params)
    assert not use_fused_optimizer(NONE, cpu_params)


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_passes_fused_through(name, cls) -> None:
    model = torch.nn.Linear(3, 2)
    hp = HyperparametersSpec(optimizer=name)
    assert isinstance(optim.build_optimizer(model, hp, fused=True), cls)
    assert optim.build_optimizer(model, hp, fused=True).defaults["fused"] is True
    assert not optim.build_optimizer(model, hp).defaults.get("fused")


@pytest.fixture
def restore_backend_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_backend_flags_follow_the_selection(restore_backend_flags) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    apply_backend_flags(NONE)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    apply_backend_flags(Speedups(tf32=True, channels_last=True, cudnn_benchmark=True))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
    # Set through the legacy switches, the new API reads the same (reading a legacy switch after
    # setting the new API would raise in PyTorch >= 2.9).
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_a_cpu_trainer_gets_no_cuda_speedups(tmp_path) -> None:
    trainer = ModelTrainer(job("plain", {"workers": {"replicas": 1}}), WorkerEnv(), RunPaths(str(tmp_path / "c"), str(tmp_path)))
    assert trainer.speedups == NONE and not trainer.optimizer.defaults.get("fused")
    assert trainer.forward is trainer.ddp  # not compiled unless asked
    trainer.core.close()


TINY = {"workers": {"replicas": 1}, "model": {"hiddenUnits": [8]},
        # iris: 105 training rows, one batch of 105 per epoch, so one shape to compile
        "data": {"source": "builtin:iris"},
        "hyperparameters": {"epochs": 2, "batchSize": 105, "compile": True}}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason=f"torch.compile cannot work here: {compile_unavailable('cpu')}")
def test_compile_switch_trains_a_compiled_model(tmp_path, fresh_dynamo, caplog) -> None:
    paths = RunPaths(str(tmp_path / "ckpt"), str(tmp_path))
    trainer = ModelTrainer(job("compiled", TINY), WorkerEnv(), paths)
    assert isinstance(trainer.forward, CompiledForward)
    with caplog.at_level(logging.WARNING):
        loss, count = trainer.train_epoch(0)
    trainer.core.close()
    assert count == 105 and loss == loss and not trainer.forward.failed
    assert "torch.compile failed" not in caplog.text
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo did capture the model
    eager = ModelTrainer(job("eager", {**TINY, "hyperparameters": {**TINY["hyperparameters"], "compile": False}}),
                         WorkerEnv(), RunPaths(str(tmp_path / "e"), str(tmp_path)))
    eager_loss, _ = eager.train_epoch(0)
    eager.core.close()
    assert loss == pytest.approx(eager_loss, rel=1e-4)  # the same model and batch, compiled


@pytest.fixture
def no_cpp_compiler():
    # inductor's own patching: pytest's monkeypatch cannot restore a config proxy's attribute.
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        yield


def test_without_a_compiler_training_goes_on_uncompiled_with_a_warning(tmp_path, no_cpp_compiler, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = run_training(job("nocc", TINY), WorkerEnv(), RunPaths(str(tmp_path / "ckpt"), str(tmp_path)))
    assert result["outcome"] == "completed" and len(result["history"]) == 2
    assert "no C++ compiler for torch.compile" in caplog.text and "training goes on uncompiled" in caplog.text


def test_a_compilation_failure_at_the_first_step_falls_back_to_eager(tmp_path, monkeypatch, no_cpp_compiler, fresh_dynamo,
                                                                   caplog) -> None:
    # The pre-check passes but the backend then fails, as when a compiler breaks mid-way.
    monkeypatch.setattr("kiln_trainer.speedups.compile_unavailable", lambda device_type: None)
    trainer = ModelTrainer(job("broken", TINY), WorkerEnv(), RunPaths(str(tmp_path / "ckpt"), str(tmp_path)))
    assert isinstance(trainer.forward, CompiledForward)
    with caplog.at_level(logging.WARNING):
        loss, count = trainer.train_epoch(0)
    trainer.core.close()
    assert trainer.forward.failed and count == 105 and loss == loss
    assert "torch.compile failed" in caplog.text


def test_errors_of_the_model_itself_are_not_swallowed() -> None:
    def broken(x):
        raise ValueError("shape mismatch")

    assert forward_of(broken, False, "cpu") is broken
    wrapper = CompiledForward.__new__(CompiledForward)
    wrapper.eager, wrapper.compiled, wrapper.failed = broken, broken, False
    with pytest.raises(ValueError, match="shape mismatch"):
        wrapper(torch.zeros(1))
    assert not wrapper.failed
