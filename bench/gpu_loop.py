"""Kiln's training loop against a hand-written loop on one device (a GPU, or the CPU with --small).

Kiln: `kiln_trainer.builtin_run.run_training` in this process (world size 1, no Ray), exactly as a
training worker runs it: data loading and placement, the epoch loop, validation, checkpoints. The
hand-written loop is what a careful PyTorch user writes for the same job: the data on the device,
one `randperm` per epoch, `index_select` batches, the same data (loaded by Kiln's loader), the same
Kiln-built model, batch size, AdamW
(fused on CUDA) and bf16 autocast (channels-last for the CNN on CUDA); nothing else.

Workloads (--small shrinks them so that a 2-core CPU finishes in under 3 minutes):
- mlp: 512 -> 4096 x 3 -> 10 (35.7 M parameters), 210 k training rows of synthetic:classification,
  batch 2048, bf16;
- resnet18: 64 x 64 RGB images from a synthetic image folder (BMP files, 10 classes), batch 256, bf16;
- tiny: 64 -> 64 -> 10, batch 64, fp32: what Kiln adds per step when the model costs nothing, measured
  as Kiln's per-step loop (ModelTrainer.train_epoch, the body of run_training's epochs) and the
  hand-written epoch run in turns, the median of the paired ratios.

Writes (default bench/results/gpu_loop.json):
- `mlp_ratio`, `resnet18_ratio`: Kiln's training samples/s / the hand-written loop's, each side's best
  steady epoch over the rounds (the first epoch of every run is warm-up; interference from anything
  else on the machine only ever slows an epoch down); `ratio_of_medians` beside it;
- `checkpoint_stall_fraction`: time the training thread spent in checkpoints / the epochs' wall time
  (mlp, checkpoint every `--checkpoint-every` epochs and after the last);
- `gpu_utilization`: mean of `nvidia-smi --query-gpu=utilization.gpu` samples every 0.2 s while Kiln
  trains the mlp (null without CUDA or nvidia-smi);
- `step_overhead`: Kiln's time per step / the hand-written loop's - 1 (tiny, median of the pairs).
Imports only torch, numpy and the project's packages (kiln_api, kiln_trainer: pydantic, fsspec,
Pillow, scikit-learn; no Ray). Usage: python bench/gpu_loop.py [--device cuda|cpu] [--small] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from kiln_trainer.worker import WorkerEnv

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_loop.json"
SPLIT = {"train": 0.96, "validation": 0.02, "test": 0.02, "seed": 0}

FULL = {
    "mlp": {"rows": 210_000, "features": 512, "hidden": [4096, 4096, 4096], "batch": 2048, "epochs": 6},
    "resnet18": {"per_class": 1000, "size": 64, "batch": 256, "epochs": 5},
    "tiny": {"rows": 60_000, "features": 64, "hidden": [64], "batch": 64, "pairs": 9},
}
SMALL = {
    "mlp": {"rows": 20_000, "features": 128, "hidden": [512, 512, 512], "batch": 256, "epochs": 4},
    "resnet18": {"per_class": 12, "size": 64, "batch": 16, "epochs": 3},
    "tiny": {"rows": 20_000, "features": 64, "hidden": [64], "batch": 64, "pairs": 15},
}


# ---------------------------------------------------------------------- Kiln


class BenchEnv(WorkerEnv):
    """A world-size-1 WorkerEnv that hands every event to `on_event` (no driver, no Ray)."""

    def __init__(self, device: torch.device, on_event: Callable[[Any], None]) -> None:
        super().__init__(device=device)
        self.on_event = on_event

    def emit(self, event: Any) -> None:
        self.on_event(event)

    emit_final = emit_any_rank = emit

    def stop_requested(self) -> bool:
        return False


class GpuSampler:
    """`nvidia-smi` utilisation samples every 0.2 s on a thread, while started."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        index = device.index or 0
        self.gpu = visible[index] if index < len(visible) and visible[index].strip().isdigit() else str(index)
        self.enabled = device.type == "cuda" and _nvidia_smi(self.gpu) is not None

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = _nvidia_smi(self.gpu)
            if value is not None:
                self.samples.append(value)

    def mean(self) -> Optional[float]:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def _nvidia_smi(gpu: str) -> Optional[float]:
    try:
        out = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def run_kiln(spec: dict[str, Any], device: torch.device, workdir: str) -> dict[str, Any]:
    from kiln_api import TrainingJob
    from kiln_trainer.builtin_run import run_training
    from kiln_trainer.events import CheckpointSaved, EpochEnded, Finished, Started
    from kiln_trainer.worker import RunPaths

    job = TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                      "metadata": {"name": "gpu-loop"}, "spec": spec})
    events: list[Any] = []
    sampler = GpuSampler(device)

    def on_event(event: Any) -> None:
        events.append(event)
        if isinstance(event, Started):
            sampler.start()
        elif isinstance(event, Finished):
            sampler.stop()

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        result = run_training(job, BenchEnv(device, on_event), RunPaths(f"{tmp}/ckpt", tmp, None))
    sampler.stop()
    epochs = [e for e in events if isinstance(e, EpochEnded)]
    started = next(e for e in events if isinstance(e, Started))
    train_rows = started.train_rows or 0
    return {
        "samples_per_second": [e.samples_per_second for e in epochs],
        "epoch_seconds": [e.epoch_seconds for e in epochs],
        "train_seconds": [train_rows / e.samples_per_second for e in epochs],
        "checkpoint_stall_seconds": result["checkpoint_stall_seconds"],
        "checkpoints": len([e for e in events if isinstance(e, CheckpointSaved)]),
        "checkpoint_write_seconds": [round(e.seconds, 3) for e in events if isinstance(e, CheckpointSaved)],
        "placement": started.data_placement,
        "gpu_utilization": sampler.mean(),
        "gpu_samples": len(sampler.samples),
    }


def job_spec(kind: str, cfg: dict[str, Any], device: torch.device, source: str, checkpoint_every: int) -> dict[str, Any]:
    bf16 = kind != "tiny"
    model = {"architecture": "resnet18"} if kind == "resnet18" else {"architecture": "mlp", "hiddenUnits": cfg["hidden"]}
    data: dict[str, Any] = {"source": source, "split": SPLIT}
    if kind == "resnet18":
        data["imageSize"] = cfg["size"]
    else:
        data["synthetic"] = {"samples": round(cfg["rows"] / SPLIT["train"]), "features": cfg["features"], "classes": 10,
                             "noise": 0.05}
    return {
        "workers": {"replicas": 1, "gpusPerWorker": 1 if device.type == "cuda" else 0},
        "model": model, "data": data,
        "hyperparameters": {"epochs": cfg.get("epochs", 1000), "batchSize": cfg["batch"], "learningRate": 1e-3, "optimizer": "adamw",
                            "mixedPrecision": "bf16" if bf16 else "none", "seed": 0},
        "checkpoint": {"everyEpochs": checkpoint_every if kind == "mlp" else 1000, "keep": 1, "metric": "val_loss"},
    }


# ---------------------------------------------------------------------- hand-written


class HandLoop:
    """The plain loop: data already on the device, one randperm per epoch, index_select batches."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int, bf16: bool,
                 device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.channels_last = cuda and x.dim() == 4
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        # Kiln's job has weightDecay 0 (its default); AdamW's own default would be 0.01.
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, **({"fused": True} if cuda else {}))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        self.x, self.y, self.batch, self.device = x, y, batch, device

    def epoch(self) -> float:
        """Seconds for one epoch (synchronised at both ends)."""
        x, y, model, optimizer = self.x, self.y, self.model, self.optimizer
        _sync(self.device)
        started = time.perf_counter()
        order = torch.randperm(len(x), device=self.device)
        for start in range(0, len(x), self.batch):
            index = order[start : start + self.batch]
            xb, yb = x.index_select(0, index), y.index_select(0, index)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with self.autocast:
                loss = self.loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        _sync(self.device)
        return time.perf_counter() - started


def hand_data(spec: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The very training split Kiln trains on (Kiln's own loader, same spec), on the device."""
    from kiln_api.spec import DataSpec
    from kiln_trainer.data import load_data

    data = load_data(DataSpec.model_validate(spec["data"]), for_architecture=spec["model"]["architecture"])
    return data.train.x.to(device), data.train.y.to(device)


def run_hand(kind: str, cfg: dict[str, Any], device: torch.device, spec: dict[str, Any],
             data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    x, y = data
    loop = HandLoop(run_hand_model(spec, data, device), x, y, batch=cfg["batch"], bf16=kind != "tiny", device=device)
    seconds = [loop.epoch() for _ in range(cfg["epochs"])]
    return {"samples_per_second": [len(x) / s for s in seconds], "epoch_seconds": seconds}


def step_overhead(cfg: dict[str, Any], device: torch.device, workdir: str, pairs: int) -> dict[str, Any]:
    """Kiln's per-step loop (ModelTrainer.train_epoch, what run_training runs each epoch) against the
    hand-written epoch, alternating one epoch of each on the same data: the median of the paired
    ratios cancels whatever else loads the machine meanwhile."""
    from kiln_api import TrainingJob
    from kiln_trainer.model_trainer import ModelTrainer
    from kiln_trainer.worker import RunPaths

    spec = job_spec("tiny", cfg, device, "synthetic:classification", 1000)
    job = TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                      "metadata": {"name": "step-overhead"}, "spec": spec})
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        trainer = ModelTrainer(job, BenchEnv(device, lambda event: None), RunPaths(f"{tmp}/ckpt", tmp, None))
        data = trainer.data.train.x.to(device), trainer.data.train.y.to(device)
        hand = HandLoop(run_hand_model(spec, data, device), *data, batch=cfg["batch"], bf16=False, device=device)
        kiln_seconds, hand_seconds = [], []
        for epoch in range(pairs + 1):  # the first pair is warm-up
            _sync(device)
            started = time.perf_counter()
            trainer.train_epoch(epoch)
            _sync(device)
            kiln_seconds.append(time.perf_counter() - started)
            hand_seconds.append(hand.epoch())
        trainer.core.close()
    steps = len(trainer.bounds)
    ratios = [k / h for k, h in zip(kiln_seconds[1:], hand_seconds[1:], strict=True)]
    return {"step_overhead": round(statistics.median(ratios) - 1, 4), "pairs": pairs, "steps_per_epoch": steps,
            "train_rows": len(data[1]), "batch": cfg["batch"],
            "kiln_ms_per_step": round(statistics.median(kiln_seconds[1:]) / steps * 1e3, 4),
            "hand_ms_per_step": round(statistics.median(hand_seconds[1:]) / steps * 1e3, 4),
            "paired_ratios": [round(r, 4) for r in ratios]}


def run_hand_model(spec: dict[str, Any], data: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> torch.nn.Module:
    from kiln_api.spec import ModelSpec
    from kiln_trainer.models import build_model

    torch.manual_seed(0)
    return build_model(ModelSpec.model_validate(spec["model"]), tuple(data[0].shape[1:]), 10).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- workloads


def write_image_folder(root: Path, per_class: int, size: int) -> Path:
    """10 class folders of random-texture RGB BMP files (written with numpy alone)."""
    rng = np.random.default_rng(0)
    header_size = 54
    row = size * 3  # a multiple of 4 for the sizes used here: BMP rows need no padding
    for label in range(10):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[:, :, label % 3] //= 2  # a little class signal
            header = b"BM" + (header_size + row * size).to_bytes(4, "little") + bytes(4) + header_size.to_bytes(4, "little")
            info = (40).to_bytes(4, "little") + size.to_bytes(4, "little") + size.to_bytes(4, "little") + (1).to_bytes(2, "little")
            info += (24).to_bytes(2, "little") + bytes(4) + (row * size).to_bytes(4, "little") + bytes(16)
            (folder / f"{i:05d}.bmp").write_bytes(header + info + pixels[::-1, :, ::-1].tobytes())
    return root


def workload(kind: str, cfg: dict[str, Any], device: torch.device, workdir: str, checkpoint_every: int,
             rounds: int) -> dict[str, Any]:
    """Kiln, then the hand-written loop, `rounds` times; each side is represented by its best steady
    epoch (the first epoch of every run is warm-up; load from anything else only slows an epoch down)."""
    if kind == "resnet18":
        source = str(write_image_folder(Path(workdir) / "images", cfg["per_class"], cfg["size"]))
    else:
        source = "synthetic:classification"
    spec = job_spec(kind, cfg, device, source, checkpoint_every)
    data = hand_data(spec, device)
    rows = len(data[1])
    kilns, hands = [], []
    for round_ in range(rounds):  # alternate who goes first, so that order favours neither
        if round_ % 2:
            hands.append(run_hand(kind, cfg, device, spec, data))
        kilns.append(run_kiln(spec, device, workdir))
        if not round_ % 2:
            hands.append(run_hand(kind, cfg, device, spec, data))
    del data
    kiln_seconds = [s for k in kilns for s in k["train_seconds"][1:]]
    hand_seconds = [s for h in hands for s in h["epoch_seconds"][1:]]
    kiln_sps, hand_sps = rows / min(kiln_seconds), rows / min(hand_seconds)
    out = {"kiln_samples_per_second": round(kiln_sps, 1), "hand_samples_per_second": round(hand_sps, 1),
           "ratio": round(kiln_sps / hand_sps, 4),
           "ratio_of_medians": round(statistics.median(hand_seconds) / statistics.median(kiln_seconds), 4),
           "train_rows": rows, "batch": cfg["batch"], "epochs": cfg["epochs"], "rounds": rounds,
           "kiln_train_seconds": [[round(s, 4) for s in k["train_seconds"]] for k in kilns],
           "hand_epoch_seconds": [[round(s, 4) for s in h["epoch_seconds"]] for h in hands],
           "placement": kilns[0]["placement"]}
    if kind == "mlp":
        k = kilns[0]
        wall = sum(k["epoch_seconds"])
        out.update(checkpoint_stall_seconds=round(k["checkpoint_stall_seconds"], 4), checkpoints=k["checkpoints"],
                   checkpoint_every_epochs=checkpoint_every, checkpoint_stall_fraction=round(k["checkpoint_stall_seconds"] / wall, 5),
                   checkpoint_write_seconds=k["checkpoint_write_seconds"], epochs_wall_seconds=round(wall, 3),
                   gpu_utilization=k["gpu_utilization"], gpu_samples=k["gpu_samples"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="shrink every workload (CPU: under 3 minutes)")
    parser.add_argument("--checkpoint-every", type=int, default=3, help="mlp: checkpoint every this many epochs")
    parser.add_argument("--rounds", type=int, default=2, help="Kiln/hand-written rounds of mlp and resnet18")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 with --device cpu, as a 1-CPU Ray worker has; torch's own on cuda)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sizes = SMALL if args.small else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-gpu-loop-") as workdir:
        for kind in ("tiny", "mlp", "resnet18"):
            t0 = time.perf_counter()
            if kind == "tiny":
                results[kind] = step_overhead(sizes[kind], device, workdir, pairs=sizes[kind]["pairs"])
            else:
                results[kind] = workload(kind, sizes[kind], device, workdir, args.checkpoint_every, args.rounds)
            print(f"{kind}: {json.dumps(results[kind])} ({time.perf_counter() - t0:.0f}s)", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    summary = {
        "device": name,
        "mlp_ratio": results["mlp"]["ratio"],
        "resnet18_ratio": results["resnet18"]["ratio"],
        "checkpoint_stall_fraction": results["mlp"]["checkpoint_stall_fraction"],
        "gpu_utilization": results["mlp"]["gpu_utilization"],
        "step_overhead": results["tiny"]["step_overhead"],
        "small": args.small, "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started, 1),
        "workloads": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "workloads"}))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
