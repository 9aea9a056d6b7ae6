"""What PyTorch offers to make a training step cheaper, chosen per job from (device, precision, model).

`select_speedups` is a pure function (table-tested); `apply_backend_flags` sets the process-wide
switches it asks for. On CUDA:
- fused optimizers (`fused=True`: one kernel for the whole update instead of a few per tensor
  list) for Adam, AdamW and SGD, when every parameter is on CUDA;
- TF32 matmuls and convolutions for fp32 jobs (`mixedPrecision: none`): tensor cores at ~10
  mantissa bits, PyTorch's recommended trade for training; bf16/fp16 jobs already compute in
  lower precision. Set through the legacy `allow_tf32` switches: with PyTorch >= 2.9 those are
  readable through both the old and the new `fp32_precision` API, while setting the new one
  makes reading the old one raise;
- channels-last memory format and `cudnn.benchmark` for convolutional models (cnn, resnet*).
On CPU nothing changes: a CPU job trains exactly as it always did.

`hyperparameters.compile` wraps the forward in `torch.compile`. Compilation happens at the first
call; where it cannot work (no C++ compiler for inductor, a Python dynamo does not support) the
first failure is logged as a warning and training goes on with the eager model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger("kiln_trainer.train")

CONV_ARCHITECTURES = ("cnn", "resnet18", "resnet34", "resnet50")
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class Speedups:
    fused_optimizer: bool = False
    tf32: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False


def select_speedups(device_type: str, mixed_precision: str, architecture: str, optimizer: str) -> Speedups:
    """The speed-ups a job gets; none off CUDA."""
    if device_type != "cuda":
        return Speedups()
    conv = architecture in CONV_ARCHITECTURES
    return Speedups(
        fused_optimizer=optimizer in FUSED_OPTIMIZERS,
        tf32=mixed_precision == "none",
        channels_last=conv,
        cudnn_benchmark=conv,
    )


def apply_backend_flags(speedups: Speedups) -> None:
    """Set the process-wide switches (one training worker per process, so they are the job's)."""
    if speedups.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if speedups.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def use_fused_optimizer(speedups: Speedups, params: Iterable[torch.Tensor]) -> bool:
    """Fused kernels need every parameter on CUDA and floating point."""
    return speedups.fused_optimizer and all(p.is_cuda and p.is_floating_point() for p in params)


def is_compile_failure(exc: BaseException) -> bool:
    """An error of torch.compile's machinery (a backend that cannot compile), not of the model."""
    import torch._dynamo.exc

    return isinstance(exc, torch._dynamo.exc.BackendCompilerFailed) or type(exc).__module__.startswith("torch._inductor")


def compile_unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot work here, or None. On CPU inductor needs a C++ compiler; on CUDA
    Triton needs a C compiler only for a small launcher: a missing one shows at the first call."""
    try:
        import torch._dynamo
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        return f"torch._dynamo cannot be imported ({exc})"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # another inductor: the first call will tell
            return None
        try:
            get_cpp_compiler()
        except Exception as exc:  # noqa: BLE001 - InvalidCxxCompiler, or whatever a broken toolchain raises
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"no C++ compiler for torch.compile on CPU ({first})"
    return None


class CompiledForward:
    """Calls the compiled module; on the first compilation failure warns once and calls the eager
    module from then on (compilation traces fake tensors, so the failed call changed nothing)."""

    def __init__(self, eager: nn.Module) -> None:
        self.eager = eager
        self.compiled = torch.compile(eager)
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except Exception as exc:
            if not is_compile_failure(exc):
                raise
            log.warning("hyperparameters.compile: torch.compile failed (%s); training goes on uncompiled",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.failed = True
            return self.eager(*args)


def forward_of(module: nn.Module, compile_model: bool, device_type: str) -> Callable[..., Any]:
    """What the training step calls: the module itself, or its compiled form when asked and possible."""
    if not compile_model:
        return module
    reason = compile_unavailable(device_type)
    if reason is not None:
        log.warning("hyperparameters.compile: %s; training goes on uncompiled", reason)
        return module
    return CompiledForward(module)
