"""Memory and throughput of streamed data (Ray Data) against the in-memory path, with 2 workers.

Generates (once, cached under --workdir) an image folder of --images JPEGs at --image-size (10
classes) and a parquet table of about --parquet-mib MiB (64 float32 features, 10 classes), then
trains one epoch of each with `kiln run` (2 workers, memoryPerWorker 2Gi, `data.loading: stream`),
and one epoch of a --compare-images folder both streamed and in memory. While a run trains, the
resident memory of every Ray Train worker process is sampled every 0.2 s (psutil); a run's figure
is the largest peak among its workers.

The local Ray cluster's object store is sized as the pods' would be (operator: 30 % of
memoryPerWorker per worker, kiln_api/ray_memory.py), not Ray's default of 30 % of this machine:
a worker's RSS counts every page of the store it has read (shared memory), so with a store of
several GiB a streamed worker's RSS grew with the data set up to the store's size while its own
memory (`peak_anon_mib_per_worker`, RssAnon) stayed flat.

Writes bench/results/data_scale.json (or --output):
- `streamed_images`, `streamed_parquet`, `compare_streamed`, `compare_in_memory`: each with
  `peak_rss_mib_per_worker` (and its parts `peak_anon_mib_per_worker`, the worker's own memory, and
  `peak_shmem_mib_per_worker`, object store pages), `peak_uss_mib_per_worker`, `samples_per_second`
  (the epoch's training throughput, all workers), `rows`, `wall_seconds`, `epoch_seconds`, and
  `first_epoch_end_to_end_seconds` / `end_to_end_samples_per_second`: from starting `kiln run` until
  its first epoch's metrics are written (Ray's start, the data's loading or the stream plan's pass,
  the epoch's training and validation), and the training rows over that;
  `load_average_1m` (at the start and the end of the run: the machine may be shared);
- `throughput_ratio`: compare_streamed / compare_in_memory samples per second. The two are not timed
  over the same work: the in-memory path decodes every image before its timed epoch, a streamed
  epoch decodes (or reads from its object-store cache) while it trains;
- `end_to_end_throughput_ratio`: the same ratio of `end_to_end_samples_per_second`, data loading
  included on both sides.
Targets (issue): peak RSS per worker <= 1536 MiB on both large sets; ratio >= 0.9.
--small shrinks every set (2,000 images, 64 MiB of parquet, 500 images to compare) for a quick run.

The image model is a light CNN (--cnn-units, default 16,32 channels) because the benchmark measures
the data path, not the model: the default cnn ([128, 64] channels) trains about 27 images/s on a
2-core machine, where 50,000 images alone would take half an hour, and its own activations (about
0.8 GiB at 32 images of 128x128 per worker) would be most of the figure the memory target is about.
`--cnn-units 128,64` measures the default model.
Usage: python bench/data_scale.py [--small] [--compare-only] [--cnn-units 16,32] [--workdir DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from kiln_api.ray_memory import object_store_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "data_scale.json"
KILN = str(Path(sys.executable).with_name("kiln"))
CLASSES = 10


def make_images(folder: Path, count: int, size: int) -> Path:
    """`count` JPEGs in 10 class folders; each class has its own colour so the task is learnable."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % CLASSES
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        base = np.array([25 * label, 255 - 25 * label, 128], dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{i}.jpg", quality=85)
    done.touch()
    return folder


def make_parquet(path: Path, mib: int) -> Path:
    """About `mib` MiB of float32 features in row groups of 100 k rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    features, group = 64, 100_000
    rows = max(group, mib * 2**20 // (features * 4))
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (CLASSES, features)).astype(np.float32)
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, rows, group):
        n = min(group, rows - start)
        y = rng.integers(0, CLASSES, n)
        x = centres[y] + rng.normal(0, 2.0, (n, features)).astype(np.float32)
        table = pa.table({**{f"f{j}": x[:, j] for j in range(features)}, "target": y})
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.rename(path)
    return path


def job_manifest(name: str, source: Path, loading: str, architecture: str, image_size: int, batch: int,
                 cnn_units: tuple[int, ...] = (16, 32)) -> dict[str, Any]:
    data: dict[str, Any] = {"source": str(source), "loading": loading, "split": {"train": 0.9, "validation": 0.05, "test": 0.05}}
    if architecture == "cnn":
        data["imageSize"] = image_size
    return {
        "apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "workers": {"replicas": 2, "cpusPerWorker": 1, "memoryPerWorker": "2Gi"},
            "model": {"architecture": architecture, "hiddenUnits": [128] if architecture == "mlp" else list(cnn_units)},
            "data": data, "hyperparameters": {"epochs": 1, "batchSize": batch},
        },
    }


def status_mib(pid: int) -> dict[str, float]:
    """`anon` and `shmem`: RssAnon and RssShmem of /proc/PID/status in MiB (Linux; empty elsewhere)."""
    names, out = {"RssAnon": "anon", "RssShmem": "shmem"}, {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in names:
                out[names[key]] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return out


def sample_workers(stop: threading.Event, peaks: dict[str, dict[int, float]]) -> None:
    """Largest RSS, USS, RssAnon and RssShmem (MiB) seen per Ray Train worker process, until `stop`.
    RSS counts the pages of Ray's shared object store a worker has read (RssShmem; USS those no other
    process mapped too); RssAnon is the worker's own heap: model, batches, shuffle buffer."""
    while not stop.wait(0.2):
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                    sample = {"rss": proc.memory_info().rss / 2**20, "uss": proc.memory_full_info().uss / 2**20}
                    sample.update(status_mib(proc.pid))
                    for kind, value in sample.items():
                        peaks[kind][proc.pid] = max(peaks[kind].get(proc.pid, 0.0), value)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue


def watch_first_epoch(stop: threading.Event, metrics: Path, started: float, seen: dict[str, float]) -> None:
    """Seconds from `started` until `metrics` (metrics.jsonl) holds its first epoch, into seen["first_epoch"]."""
    while not stop.wait(0.1):
        try:
            if '"epoch"' in metrics.read_text():
                seen["first_epoch"] = time.monotonic() - started
                return
        except OSError:
            continue


def run(name: str, manifest: dict[str, Any], workdir: Path) -> dict[str, Any]:
    job_file = workdir / f"{name}.yaml"
    job_file.write_text(yaml.safe_dump(manifest))
    out = workdir / "out"
    # A fresh output (and so fresh checkpoints): an earlier run's would be resumed, not trained again.
    shutil.rmtree(out / name, ignore_errors=True)
    ray_tmp = tempfile.mkdtemp(prefix="kds-", dir="/tmp")
    peaks: dict[str, dict[int, float]] = {"rss": {}, "uss": {}, "anon": {}, "shmem": {}}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_workers, args=(stop, peaks), daemon=True)
    sampler.start()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    first_epoch: dict[str, float] = {}
    watcher = threading.Thread(target=watch_first_epoch, args=(stop, out / name / "metrics.jsonl", started, first_epoch),
                               daemon=True)
    watcher.start()
    workers = manifest["spec"]["workers"]
    store = workers["replicas"] * object_store_bytes(workers["memoryPerWorker"])
    env = {**os.environ, "KILN_RAY_TEMP_DIR": ray_tmp, "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(store)}
    result = subprocess.run([KILN, "run", str(job_file), "--output", str(out), "--ray"], env=env,
                            capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    watcher.join()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    record = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()][-1]
    status = json.loads((out / name / "status.json").read_text())
    figures = {f"peak_{kind}_mib_per_worker": round(max(values.values()), 1) if values else None
               for kind, values in peaks.items()}
    figures.update({
        "samples_per_second": round(record["samples_per_second"], 1),
        "rows": status["progress"].get("trainRows"),
        "placement": status["progress"].get("dataPlacement"),
        "wall_seconds": round(wall, 1),
        "epoch_seconds": round(record["epoch_seconds"], 1),
        "first_epoch_end_to_end_seconds": round(first_epoch["first_epoch"], 1) if first_epoch else None,
        "end_to_end_samples_per_second": (round(status["progress"]["trainRows"] / first_epoch["first_epoch"], 1)
                                          if first_epoch and status["progress"].get("trainRows") else None),
        "object_store_mib": round(store / 2**20),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    })
    print(f"{name}: {figures}", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--parquet-mib", type=int, default=2048)
    parser.add_argument("--compare-images", type=int, default=5_000)
    parser.add_argument("--small", action="store_true", help="2,000 images, 64 MiB of parquet, 500 to compare")
    parser.add_argument("--compare-only", action="store_true",
                        help="only the --compare-images pair (streamed, in memory): no large image folder or parquet run")
    parser.add_argument("--cnn-units", default="16,32", help="channels of the image CNN's conv blocks (see above)")
    parser.add_argument("--workdir", default="/tmp/kiln-data-scale")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if args.small:
        args.images, args.parquet_mib, args.compare_images = 2_000, 64, 500
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    compare = make_images(work / f"images-{args.compare_images}-{args.image_size}", args.compare_images, args.image_size)
    size, results = args.image_size, {}
    units = tuple(int(part) for part in args.cnn_units.split(","))

    def cnn(name: str, source: Path, loading: str) -> dict[str, Any]:
        return run(name, job_manifest(name, source, loading, "cnn", size, 64, units), work)

    if not args.compare_only:
        images = make_images(work / f"images-{args.images}-{args.image_size}", args.images, args.image_size)
        table = make_parquet(work / f"table-{args.parquet_mib}mib.parquet", args.parquet_mib)
        results["streamed_images"] = cnn("streamed-images", images, "stream")
        results["streamed_parquet"] = run("streamed-parquet", job_manifest("streamed-parquet", table, "stream", "mlp", size,
                                                                           1024), work)
    results["compare_streamed"] = cnn("compare-streamed", compare, "stream")
    results["compare_in_memory"] = cnn("compare-in-memory", compare, "memory")
    results["throughput_ratio"] = round(results["compare_streamed"]["samples_per_second"]
                                        / results["compare_in_memory"]["samples_per_second"], 3)
    end_to_end = [results[k]["end_to_end_samples_per_second"] for k in ("compare_streamed", "compare_in_memory")]
    results["end_to_end_throughput_ratio"] = round(end_to_end[0] / end_to_end[1], 3) if all(end_to_end) else None
    results.update({
        "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)", "workers": 2, "memory_per_worker": "2Gi",
        "images": args.images, "image_size": size, "parquet_mib": args.parquet_mib, "compare_images": args.compare_images,
        "cnn_units": list(units), "batch_size": 64,
    })
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
