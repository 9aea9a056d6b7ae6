"""Operator load benchmark: 200 TrainingJobs created at once against the emulated API server.

No kubelet runs: pods are created, never started. The operator is the real `kiln operator`
subprocess. Reports the time until every job has all its objects (Secret, Service,
NetworkPolicy, head and worker pods), p50/p95 of create -> all-pods-created per job,
reconcile throughput, the operator's peak RSS and API requests per job, and writes them to
bench/results/operator_load.json.

    .venv/bin/python bench/operator_load.py [--jobs 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.harness import Jobs, OperatorProcess  # noqa: E402
from tests.e2e.scenario import small_job  # noqa: E402
from tests.support.k8s_emulator import EmulatedApiServer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "operator_load.json"
KINDS = ("v1/secrets", "v1/services", "networking.k8s.io/v1/networkpolicies")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def complete_jobs(api: EmulatedApiServer, workers: int) -> tuple[set[str], set[str]]:
    """(jobs whose pods all exist, jobs with every object), read from the emulator's store."""
    def by_job(resource: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for obj in api.list(resource, "default"):
            job = (obj["metadata"].get("labels") or {}).get("kiln.dev/job-name")
            if job:
                counts[job] = counts.get(job, 0) + 1
        return counts

    pods = by_job("v1/pods")
    with_pods = {job for job, count in pods.items() if count >= workers + 1}
    others = [by_job(kind) for kind in KINDS]
    return with_pods, {job for job in with_pods if all(job in counts for counts in others)}


def reconcile_count(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return float("nan")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("kiln_reconcile_duration_seconds_count"))


def run(jobs_wanted: int, workers: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp, EmulatedApiServer(Path(tmp)) as api:
        jobs = Jobs(api.client())
        jobs.create_claim()
        operator = OperatorProcess(api.kubeconfig_path, Path(tmp) / "operator.log", timer_interval_seconds=30)
        with operator:
            time.sleep(3)  # let the operator start watching: its start-up is not what is measured
            baseline = len(api.requests)
            created: dict[str, float] = {}
            names = [f"load-{i:03d}" for i in range(jobs_wanted)]

            def create(name: str) -> None:
                jobs.create(small_job(name, workers=workers))
                created[name] = time.monotonic()

            start = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, names))
            pods_at: dict[str, float] = {}
            done: set[str] = set()
            while len(done) < jobs_wanted and time.monotonic() - start < timeout:
                with_pods, done = complete_jobs(api, workers)
                now = time.monotonic()
                for name in with_pods:
                    pods_at.setdefault(name, now)
                operator.sample_rss()
                time.sleep(0.05)
            all_ready = time.monotonic() - start
            requests = len(api.requests) - baseline
            reconciles = reconcile_count(operator.metrics_port)
            latencies = [pods_at[n] - created[n] for n in names if n in pods_at]
    return {
        "jobs": jobs_wanted,
        "workers_per_job": workers,
        "jobs_complete": len(done),
        "p50_seconds": round(statistics.median(latencies), 3) if latencies else None,
        "p95_seconds": round(percentile(latencies, 0.95), 3) if latencies else None,
        "all_ready_seconds": round(all_ready, 2),
        "create_seconds": round(max(created.values()) - start, 2),
        "reconcile_throughput_jobs_per_second": round(len(done) / all_ready, 2),
        "reconciles_total": reconciles,
        "peak_rss_mib": round(operator.peak_rss / 2**20, 1),
        "requests_per_job": round(requests / jobs_wanted, 1),
        "targets": {"p50_seconds": 0.2, "all_ready_seconds": 60, "peak_rss_mib": 250},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    result = run(args.jobs, args.workers, args.timeout)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
