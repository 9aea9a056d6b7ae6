"""Kiln's trainer vs a hand-written torch.distributed DDP loop: same model, data, global batch, workers.

Both sides train the same `synthetic:classification` data with the same Kiln-built MLP,
2 workers (gloo on CPU, NCCL on CUDA), the same global batch, and validate on the same
split every epoch with an all-reduce. Kiln additionally does what the baseline does not:
Ray Train start-up, sharding by DistributedSampler, progress events to the driver,
early-stopping bookkeeping and a complete checkpoint every epoch.

Throughput is training samples per second over the steady-state epochs (the first epoch
is warm-up), measured by each rank-0 as wall time per whole epoch (train + validation +
checkpoint stall). Time to first step runs from the start of the launch (before
`ray.init` / `mp.spawn`) to the end of the first optimizer step.

Usage: python bench/trainer_overhead.py [--samples N] [--epochs E] [--workers W] [--device cpu|cuda]
Writes bench/results/trainer_overhead.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from kiln_api import TrainingJob

RESULTS = Path(__file__).resolve().parent / "results" / "trainer_overhead.json"


def bench_job(args: argparse.Namespace) -> TrainingJob:
    return TrainingJob.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bench"},
        "spec": {
            "workers": {"replicas": args.workers, "cpusPerWorker": 1, "gpusPerWorker": 1 if args.device == "cuda" else 0},
            "model": {"architecture": "mlp", "hiddenUnits": [args.width, args.width]},
            "data": {"source": "synthetic:classification",
                     "synthetic": {"samples": args.samples, "features": args.features, "classes": 10, "noise": 0.05},
                     "split": {"train": 0.9, "validation": 0.05, "test": 0.05, "seed": 0}},
            "hyperparameters": {"epochs": args.epochs, "batchSize": args.batch, "learningRate": 0.001, "optimizer": "adam",
                                "seed": 0},
            "checkpoint": {"everyEpochs": 1, "keep": 2, "metric": "val_loss"},
        },
    })


# ---------------------------------------------------------------------- baseline


def _free_port() -> int:
    """A free port outside Ray's worker port range (10002-19999), where a Ray process still
    winding down from the previous round could take it from gloo's rendezvous."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not 10002 <= port <= 19999:
            return port


def _baseline_worker(rank: int, world: int, port: int, job_json: str, device_kind: str, started: float, out: str) -> None:
    from kiln_trainer.data import load_data
    from kiln_trainer.models import build_model

    torch.set_num_threads(1)  # what Ray gives a 1-CPU worker (OMP_NUM_THREADS=1)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank % max(torch.cuda.device_count(), 1)}" if device_kind == "cuda" else "cpu")
    job = TrainingJob.model_validate_json(job_json)
    hp = job.spec.hyperparameters
    torch.manual_seed(hp.seed)
    data = load_data(job.spec.data, for_architecture="mlp")
    model = build_model(job.spec.effective_model, data.input_shape, data.output_dim).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = data.train.x, data.train.y
    vx, vy = data.validation.x, data.validation.y
    per_worker = hp.batch_size // world
    first_step, epochs = None, []
    for epoch in range(hp.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))[rank::world]
        for start in range(0, len(order), per_worker):
            idx = order[start : start + per_worker]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x[idx].to(device)), y[idx].to(device))
            loss.backward()
            optimizer.step()
            if first_step is None:
                first_step = time.time() - started
        with torch.no_grad():
            mine = torch.arange(rank, len(vy), world)
            out_v = model(vx[mine].to(device))
            sums = torch.tensor([float(loss_fn(out_v, vy[mine].to(device))) * len(mine),
                                 float((out_v.argmax(1) == vy[mine].to(device)).sum()), float(len(mine))], device=device)
            dist.all_reduce(sums)
        epochs.append({"seconds": time.perf_counter() - t0, "samples": len(y)})
    if rank == 0:
        Path(out).write_text(json.dumps({"first_step": first_step, "epochs": epochs}))
    dist.destroy_process_group()


def run_baseline(job: TrainingJob, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "baseline.json")
        started = time.time()
        mp.spawn(_baseline_worker, args=(job.spec.workers.replicas, _free_port(), job.model_dump_json(by_alias=True),
                                         device, started, out), nprocs=job.spec.workers.replicas, join=True)
        result = json.loads(Path(out).read_text())
    steady = result["epochs"][1:] or result["epochs"]
    return {"samples_per_second": sum(e["samples"] for e in steady) / sum(e["seconds"] for e in steady),
            "time_to_first_step_seconds": result["first_step"],
            "epoch_seconds": [e["seconds"] for e in result["epochs"]]}


# ---------------------------------------------------------------------- kiln


def run_kiln(job: TrainingJob) -> dict[str, Any]:
    from kiln_trainer.local import run_local

    with tempfile.TemporaryDirectory(prefix="kb-", dir="/tmp") as tmp:
        started = time.time()
        code, runner = run_local(job, tmp, manifest_dir=tmp, stream=io.StringIO())
        # The per-epoch records `kiln run` writes (metrics.jsonl), not driver internals.
        events = [json.loads(line) for line in Path(tmp, job.name, "metrics.jsonl").read_text().splitlines()]
    if code != 0:
        raise SystemExit(f"kiln run failed ({code}): {runner.status.message}")
    steady = events[1:] or events
    n_train = _train_rows(job)
    stall = [e["checkpoint_stall_seconds"] for e in events]
    per_epoch_stall = [b - a for a, b in zip([0.0, *stall[:-1]], stall, strict=True)]
    return {
        "samples_per_second": n_train * len(steady) / sum(e["epoch_seconds"] for e in steady),
        "time_to_first_step_seconds": runner.first_step_time - started,
        "epoch_seconds": [e["epoch_seconds"] for e in events],
        "checkpoint_stall_fraction": sum(per_epoch_stall[1:] or per_epoch_stall)
        / sum(e["epoch_seconds"] for e in steady),
    }


def _train_rows(job: TrainingJob) -> int:
    from kiln_trainer.data import load_data

    return len(load_data(job.spec.data, for_architecture="mlp").train)


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["samples_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    job = bench_job(args)
    # Alternate the two so that load from anything else on the machine hits both alike;
    # each side is then represented by its median round.
    load_before = os.getloadavg()
    baselines, kilns = [], []
    for round_ in range(args.rounds):
        baselines.append(run_baseline(job, args.device))
        b = baselines[-1]
        print(f"[{round_ + 1}] baseline: {b['samples_per_second']:.0f} samples/s, first step after "
              f"{b['time_to_first_step_seconds']:.1f}s, epochs {[round(s, 2) for s in b['epoch_seconds']]}")
        kilns.append(run_kiln(job))
        k = kilns[-1]
        print(f"[{round_ + 1}] kiln:     {k['samples_per_second']:.0f} samples/s, first step after "
              f"{k['time_to_first_step_seconds']:.1f}s, epochs {[round(s, 2) for s in k['epoch_seconds']]}, "
              f"checkpoint stall {k['checkpoint_stall_fraction']:.2%} of an epoch")
    baseline = _median_round(baselines)
    kiln = _median_round(kilns)
    ratio = kiln["samples_per_second"] / baseline["samples_per_second"]
    print(f"ratio:    {ratio:.3f} (target >= 0.97)")
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    result = {
        "kiln_samples_per_second": round(kiln["samples_per_second"], 1),
        "baseline_samples_per_second": round(baseline["samples_per_second"], 1),
        "ratio": round(ratio, 4),
        "kiln_time_to_first_step_seconds": round(kiln["time_to_first_step_seconds"], 2),
        "baseline_time_to_first_step_seconds": round(baseline["time_to_first_step_seconds"], 2),
        "checkpoint_stall_fraction": round(kiln["checkpoint_stall_fraction"], 4),
        "device": device_name,
        "workers": args.workers,
        "global_batch": args.batch,
        "workload": f"synthetic:classification {args.samples}x{args.features}, mlp [{args.width}, {args.width}], "
                    f"{args.epochs} epochs (first is warm-up)",
        "kiln_epoch_seconds": [round(s, 3) for s in kiln["epoch_seconds"]],
        "baseline_epoch_seconds": [round(s, 3) for s in baseline["epoch_seconds"]],
        "rounds": args.rounds,
        "round_ratios": [round(k["samples_per_second"] / b["samples_per_second"], 4) for k, b in zip(kilns, baselines, strict=True)],
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "all_rounds_ratio_of_means": round(statistics.mean(k["samples_per_second"] for k in kilns)
                                           / statistics.mean(b["samples_per_second"] for b in baselines), 4),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
