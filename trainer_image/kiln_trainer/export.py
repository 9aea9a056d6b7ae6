"""`kiln export MODEL --format onnx|torchscript`: the trained network for a serving stack.

What is exported is the network alone: its input is already preprocessed (shape
(batch, *input_shape), the batch dimension dynamic) and its output is the raw scores (logits for
classification, standardised values for regression). How to get from raw data to that input and
from the output back to labels or units is written beside it as JSON (`FILE.kiln.json`: the
model's `inference` recipe, class names and target scaling). Every export is checked before it is
kept: the exported model must give PyTorch's outputs within `TOLERANCE` on seeded inputs
(onnxruntime runs ONNX files; without it the check is skipped, and said so).

ONNX uses torch.onnx's TorchScript-based exporter (`dynamo=False`): it needs only the `onnx`
package, runs on the CPU, and handles the dynamic batch dimension of every built-in model.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Optional, TextIO

import numpy as np
import torch
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from torch import nn

from .data.errors import SpecError
from .model_artifact import ModelArtifact, read_artifact
from .storage import is_remote, pvc_root_from, resolve_location

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
RECIPE_SUFFIX = ".kiln.json"
TOLERANCE = 1e-4
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"


@dataclass
class ExportResult:
    path: str
    recipe_path: str
    max_difference: Optional[float]  # None: not checked (onnxruntime missing)


def export_cli(model: str, fmt: str, output: Optional[str], *, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Exit code 0, or 2 with one line naming what is wrong."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        result = export_model(model, fmt, output, pvc_root=pvc_root_from(os.environ))
    except SpecError as exc:
        print(f"kiln export: {exc}", file=err)
        return 2
    checked = ("not checked: onnxruntime is not installed" if result.max_difference is None
               else f"max difference from PyTorch {result.max_difference:.2e}")
    print(f"kiln export: {fmt} model written to {result.path} ({checked}); preprocessing in {result.recipe_path}", file=out)
    return 0


def export_model(model: str, fmt: str, output: Optional[str] = None, pvc_root: str = PVC_MOUNT_ROOT) -> ExportResult:
    """Export `model` (a model.pt: a path, pvc:// under `pvc_root`, or an object-store URL) as `fmt`
    to `output`, a local file (default: beside the model when that is on this machine), and check it."""
    if fmt not in FORMATS:
        raise SpecError("--format", f"{fmt!r} is not an export format; choose {' or '.join(FORMATS)}")
    location = resolve_location(model, pvc_root)
    if output is None and is_remote(location):
        raise SpecError("--output", f"{model} is in an object store; name a local file to write the export to")
    artifact = read_artifact(model, pvc_root)
    net = artifact.build("cpu")
    path = output or os.path.splitext(location)[0] + SUFFIXES[fmt]
    if not is_remote(location) and os.path.abspath(path) == os.path.abspath(location):
        raise SpecError("--output", f"{path} is the model itself; choose another file")
    example = artifact.example_input(rows=2, seed=0)
    try:
        if fmt == "onnx":
            _export_onnx(net, example, path)
        else:
            _export_torchscript(net, example, path)
        difference = check_export(artifact, net, path, fmt)
        recipe_path = path + RECIPE_SUFFIX
        write_recipe(artifact, fmt, path, recipe_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)  # a half-written or unchecked export is worse than none
        raise
    return ExportResult(path=path, recipe_path=recipe_path, max_difference=difference)


def _export_onnx(net: nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs it; say so before torch fails obscurely
    except ImportError as exc:
        raise SpecError("--format", "onnx export needs the onnx package: pip install 'kiln[export]'") from exc
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's business
            torch.onnx.export(net, (example,), path, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=OPSET)
    except OSError as exc:
        raise SpecError("--output", f"{path}: cannot write it: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for an op it cannot express
        raise SpecError("--format", f"torch's ONNX exporter cannot export this model ({str(exc).strip()[:300]}); "
                        "--format torchscript can") from exc


def _export_torchscript(net: nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, (example,), check_trace=False)
    except Exception as exc:  # noqa: BLE001 - tracing raises many types for what it cannot follow
        raise SpecError("--format", f"this model cannot be traced to TorchScript: {str(exc).strip()[:300]}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript still loads everywhere torch runs
            torch.jit.save(traced, path)
    except (OSError, RuntimeError) as exc:
        raise SpecError("--output", f"{path}: cannot write it: {exc}") from exc


def check_export(artifact: ModelArtifact, net: nn.Module, path: str, fmt: str,
                 inputs: Optional[torch.Tensor] = None) -> Optional[float]:
    """The largest difference between PyTorch's and the export's outputs (other batch size than traced)."""
    x = artifact.example_input(rows=5, seed=1) if inputs is None else inputs
    with torch.inference_mode():
        expected = net(x).float().numpy()
    got = run_export(path, fmt, x)
    if got is None:
        return None
    difference = float(np.abs(got - expected).max()) if expected.size else 0.0
    if not difference <= TOLERANCE:
        raise SpecError("--format", f"the {fmt} export differs from PyTorch by {difference:.2e} (more than {TOLERANCE})")
    return difference


def run_export(path: str, fmt: str, x: torch.Tensor) -> Optional[np.ndarray]:
    """Run an exported file on `x` (None: ONNX without onnxruntime installed)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(path, map_location="cpu")
        with torch.inference_mode():
            return loaded(x).float().numpy()
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {INPUT_NAME: x.numpy()})[0], dtype=np.float32)


def write_recipe(artifact: ModelArtifact, fmt: str, path: str, recipe_path: str) -> None:
    """FILE.kiln.json: what a serving stack needs around the network."""
    try:
        with open(recipe_path, "w") as handle:
            json.dump(recipe(artifact, fmt, path), handle, indent=2, sort_keys=True)
    except OSError as exc:
        raise SpecError("--output", f"{recipe_path}: cannot write it: {exc.strerror or exc}") from exc


def recipe(artifact: ModelArtifact, fmt: str, path: str) -> dict[str, Any]:
    meta = artifact.metadata
    classify = meta.task == "classification"
    return {
        "format": "kiln-export", "version": 1, "export_format": fmt, "file": os.path.basename(path),
        "input": {"name": INPUT_NAME, "shape": ["batch", *meta.input_shape], "dtype": meta.input_dtype,
                  "preprocessing": "inference (raw data -> input)"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", meta.output_dim],
                   "meaning": "logits: softmax gives the probabilities of class_names" if classify
                   else "standardised: multiply by target_std and add target_mean for the target's units"},
        "task": meta.task, "class_names": meta.class_names, "target_mean": meta.target_mean,
        "target_std": meta.target_std, "model": meta.model, "inference": meta.inference,
    }
