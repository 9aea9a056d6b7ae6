"""Operator load benchmark: 200 and then 1,000 TrainingJobs created at once against the emulated API server.

No kubelet runs: pods are created, never started. The operator is the real `kiln operator`
subprocess. Reports the time until every job has all its objects (Secret, Service,
NetworkPolicy, head and worker pods), p50/p95 of create -> all-pods-created per job,
reconcile throughput, the operator's peak RSS and API requests per job, and writes them to
bench/results/operator_load.json as {"runs": [one entry per size]}.

The emulator runs in a process of its own, as a real API server would: in the benchmark's
process it would share one interpreter lock with the clients creating the jobs.

    .venv/bin/python bench/operator_load.py [--jobs 200 1000] [--workers 2] [--rate JOBS_PER_SECOND]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kiln_api import GROUP_VERSION, PLURAL  # noqa: E402

from tests.e2e.harness import Jobs, OperatorProcess  # noqa: E402
from tests.e2e.scenario import small_job  # noqa: E402
from tests.support.k8s_emulator import EmulatedApiServer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "operator_load.json"
# From issue 14: p50 at 200 jobs, every job's pods at 1,000, RSS at 1,000, and the per-request figures.
TARGETS = {"p50_seconds_at_200": 0.5, "all_ready_seconds_at_1000": 60, "peak_rss_mib_at_1000": 250,
           "emulator_cpu_ms_per_request": 0.3, "requests_per_job": 12}
# The jobs' arrival: all at once (8 creates in flight); `--rate` paces them instead.
CREATE_RATE = 0.0
KINDS = ("v1/secrets", "v1/services", "networking.k8s.io/v1/networkpolicies")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class JobProgress:
    """Which jobs have all their pods, and which every object, found on the emulator's loop from
    its label index. A poll answers only what became true since the last one and looks again only
    at jobs not yet complete, so polling every 50 ms costs the emulator little at 1,000 jobs.
    (Copying every stored object each poll, what `api.list` does, took a third of its CPU.)"""

    LABEL = "kiln.dev/job-name"

    def __init__(self, api: EmulatedApiServer, workers: int) -> None:
        self.index = api.emulator.state.index
        self.workers = workers
        self.with_pods: set[str] = set()
        self.done: set[str] = set()

    def poll(self) -> tuple[list[str], list[str]]:
        """(jobs newly with every pod, jobs newly with every object). Every job is in `default`."""
        pods = self.index.label_members("v1/pods", self.LABEL)
        new_pods = [job for job, keys in pods.items() if job not in self.with_pods and len(keys) >= self.workers + 1]
        self.with_pods.update(new_pods)
        others = [self.index.label_members(kind, self.LABEL) for kind in KINDS]
        new_done = [job for job in self.with_pods - self.done if all(job in members for members in others)]
        self.done.update(new_done)
        return new_pods, new_done


OPERATOR_AGENTS = ("kiln-operator", "kopf/")  # the operator's own client, and kopf's


def request_breakdown(requests: list[Any]) -> dict[str, int]:
    """The operator's requests by "verb resource", most frequent first (the benchmark's own
    creates of the jobs are not the operator's)."""
    counts = Counter(f"{r.verb} {r.resource}" for r in requests if r.agent.startswith(OPERATOR_AGENTS))
    return dict(counts.most_common())


# The emulator process's young generation is collected every this many container allocations
# (Python's default: 700). Every request decodes a JSON body into fresh dicts and the store holds
# only acyclic JSON, so the default collects hundreds of times a second and finds nothing: at
# 1,000 jobs that was 0.46 s of the emulator's 4.0 CPU-seconds, 0.05-0.07 s with this threshold.
EMULATOR_GC_THRESHOLD = (20_000, 20, 20)


class GcClock:
    """CPU time spent in garbage collection in this process (from gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


def serve_emulator(workdir: str, workers: int, conn: Connection) -> None:
    """The emulator's own process: answers "progress", "requests", "operator_requests", "breakdown",
    "cpu" and "gc_cpu" until told "stop".

    With $KILN_BENCH_PROFILE set, the emulator thread's profile is written there (cProfile)."""
    gc.set_threshold(*EMULATOR_GC_THRESHOLD)
    gc_clock = GcClock()
    profile_to = os.environ.get("KILN_BENCH_PROFILE")
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        threading.setprofile(lambda *a: (threading.setprofile(None), profiler.enable()))  # type: ignore[func-returns-value]
    with EmulatedApiServer(Path(workdir)) as api:
        progress = JobProgress(api, workers)
        conn.send((api.url, api.kubeconfig_path))
        while (command := conn.recv()) != "stop":
            # Computed on the emulator's loop: `api.requests` would copy the whole request log.
            answers = {"progress": lambda: api._call(progress.poll, fresh=True), "requests": lambda: api._call(lambda: len(api.emulator.log)),
                       "operator_requests": lambda: api._call(lambda: sum(request_breakdown(api.emulator.log).values())),
                       "cpu": time.process_time, "gc_cpu": lambda: gc_clock.seconds,
                       "breakdown": lambda: api._call(lambda: request_breakdown(api.emulator.log))}
            conn.send(answers[command]())
    if profile_to:
        profiler.disable()
        profiler.dump_stats(profile_to)


class EmulatorProcess:
    """`EmulatedApiServer` in a child process, asked over a pipe."""

    def __init__(self, workdir: str, workers: int) -> None:
        self.conn, child = multiprocessing.get_context("spawn").Pipe()
        self.proc = multiprocessing.get_context("spawn").Process(target=serve_emulator, args=(workdir, workers, child),
                                                                 daemon=True)

    def __enter__(self) -> EmulatorProcess:
        self.proc.start()
        if not self.conn.poll(60):
            raise RuntimeError("the emulated API server did not start within 60 s")
        self.url, self.kubeconfig_path = self.conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.send("stop")
        self.proc.join(30)

    def ask(self, command: str) -> Any:
        self.conn.send(command)
        return self.conn.recv()

    def client(self) -> Any:
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.url))


class PacedCreates:
    """Creates the jobs all at once from 8 threads, or at a steady `rate` a second (as
    clusterloader2 paces its creates), each a POST of pre-encoded JSON over a kept-alive connection.

    The arrival is the benchmark's load, so it is fixed here: p50 is the median job's wait behind
    those created before it, and a burst that arrives faster makes it longer. The official client,
    used before, took about 4 ms of CPU per create on the cores the operator and emulator share
    (0.8 CPU-seconds at 200 jobs) and so set the pace itself: 200 jobs in 0.98 s on a quiet host,
    1.2-1.5 s on a busy one. Its timestamps also came after its own parsing of each answer.
    """

    THREADS = 8

    def __init__(self, url: str, manifests: list[dict[str, Any]], rate: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.path = f"/apis/{GROUP_VERSION}/namespaces/default/{PLURAL}"
        self.bodies = [(m["metadata"]["name"], json.dumps(m).encode()) for m in manifests]
        self.rate = rate
        self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="create")
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._futures: list[Any] = []

    def __enter__(self) -> PacedCreates:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for connection in self._connections:
            connection.close()

    def start(self) -> float:
        """Schedules every create; returns the moment the first is due (time.monotonic)."""
        start = time.monotonic()
        self._futures = [self._pool.submit(self._create, start + (i / self.rate if self.rate else 0), name, body)
                         for i, (name, body) in enumerate(self.bodies)]
        return start

    def finish(self) -> dict[str, float]:
        """Job name -> when the API server answered its create; raises what a create raised."""
        return dict(future.result() for future in self._futures)

    def _create(self, due: float, name: str, body: bytes) -> tuple[str, float]:
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the schedule itself, not a wait on a condition
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(*self.address, timeout=60)
            self._connections.append(connection)  # list.append is atomic: no lock between the threads
        connection.request("POST", self.path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 201:
            raise RuntimeError(f"create {name}: {response.status} {answer[:300]!r}")
        return name, time.monotonic()


def cpu_seconds(operator: OperatorProcess) -> float:
    assert operator.proc is not None
    times = psutil.Process(operator.proc.pid).cpu_times()
    return times.user + times.system


def reconcile_count(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return float("nan")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("kiln_reconcile_duration_seconds_count"))


def reference_workload_ms(rounds: int = 5) -> float:
    """The fastest of `rounds` timings of one fixed piece of pure-Python work (a pod-sized dict
    encoded, decoded and compared 2,000 times), taken before each run starts its processes. The
    figures are CPU time, and a shared 2-core host has given the same code 0.25 and 0.43 ms per
    request within an hour: this says how fast the machine was when they were taken."""
    pod = {"metadata": {"name": "p", "labels": {f"k{i}": "v" for i in range(8)}},
           "spec": {"containers": [{"name": "c", "env": [{"name": f"E{i}", "value": str(i)} for i in range(20)]}]}}
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(2000):
            if json.loads(json.dumps(pod)) != pod:
                raise RuntimeError("the reference workload's JSON round trip changed the pod")
        best = min(best, time.process_time() - started)
    return round(1000 * best, 1)


def run(jobs_wanted: int, workers: int, timeout: float, rate: float) -> dict:
    reference = reference_workload_ms()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(tmp, workers) as api:
        jobs = Jobs(api.client())
        jobs.create_claim()
        operator = OperatorProcess(api.kubeconfig_path, Path(tmp) / "operator.log", timer_interval_seconds=30)
        with operator:
            time.sleep(3)  # let the operator start watching: its start-up is not what is measured
            baseline, emulator_cpu, emulator_gc = api.ask("requests"), api.ask("cpu"), api.ask("gc_cpu")
            operator_baseline = api.ask("operator_requests")
            breakdown_before = Counter(api.ask("breakdown"))
            operator_cpu = cpu_seconds(operator)
            names = [f"load-{i:03d}" for i in range(jobs_wanted)]
            pods_at: dict[str, float] = {}
            done: set[str] = set()
            # Polled while the jobs are still being created: a job made early must not wait for
            # the last create to have its pods noticed (that once added up to 2.8 s to the p50).
            with PacedCreates(api.url, [small_job(name, workers=workers) for name in names], rate) as generator:
                generator_cpu = time.process_time()
                start = generator.start()
                while len(done) < jobs_wanted and time.monotonic() - start < timeout:
                    new_pods, new_done = api.ask("progress")
                    now = time.monotonic()
                    pods_at.update((name, now) for name in new_pods)
                    done.update(new_done)
                    operator.sample_rss()
                    time.sleep(0.05)
                created = generator.finish()  # a failed create fails the benchmark
            all_ready = time.monotonic() - start
            requests = api.ask("requests") - baseline
            operator_requests = api.ask("operator_requests") - operator_baseline
            breakdown = Counter(api.ask("breakdown")) - breakdown_before
            emulator_cpu = api.ask("cpu") - emulator_cpu
            emulator_gc = api.ask("gc_cpu") - emulator_gc
            operator_cpu = cpu_seconds(operator) - operator_cpu
            generator_cpu = time.process_time() - generator_cpu
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
        # The operator's requests (its own client's and kopf's); every request the emulator served
        # (the benchmark's creates and polls included) is what its CPU per request divides by.
        "requests_per_job": round(operator_requests / jobs_wanted, 1),
        "all_requests_per_job": round(requests / jobs_wanted, 1),
        "requests_per_job_by_verb": {k: round(n / jobs_wanted, 2) for k, n in breakdown.most_common()},
        # Where the time goes: CPU seconds each process spent until every job was complete.
        "emulator_cpu_seconds": round(emulator_cpu, 2),
        "emulator_cpu_ms_per_request": round(1000 * emulator_cpu / max(requests, 1), 2),
        "emulator_gc_cpu_seconds": round(emulator_gc, 2),
        "operator_cpu_seconds": round(operator_cpu, 2),
        "operator_cpu_seconds_per_job": round(operator_cpu / jobs_wanted, 4),
        # The benchmark's own process (its creates and its polls), on the same two cores.
        "load_generator_cpu_seconds": round(generator_cpu, 2),
        "create_rate_per_second": rate,
        # Other work on the machine shows in every figure above: the 1-minute load when it ended.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "reference_workload_ms": reference,
        "cpu_count": os.cpu_count(),
        "targets": TARGETS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[200, 1000], help="one run per size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--rate", type=float, default=CREATE_RATE, help="jobs created a second (0: all at once)")
    args = parser.parse_args()
    runs = []
    for size in args.jobs:
        result = run(size, args.workers, args.timeout, args.rate)
        runs.append(result)
        for key, value in result.items():
            print(f"{key:40s} {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
