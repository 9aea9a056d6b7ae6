"""Running spec.search on Ray Tune: each trial is one Kiln training run (driver.JobRunner).

Tune's searcher proposes values (search_space.py), each trial trains the job with them set
(`<storage>/trials/<trial>/` holds its checkpoints) and reports every epoch's metrics to Tune,
so that ASHA or the median rule can stop it. A trial of one training worker trains in its Tune
actor's process, as `kiln run` does; more workers run Kiln's TorchTrainer from the trial.

Writes `<output>/<job>/`: search.json (search_report.search_document), search.png,
status.json (status.search filled in), trials/<trial>/model.pt and model.pt (the best trial's).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from kiln_api import TrainingJob
from kiln_api.ray_memory import local_object_store_bytes
from kiln_api.search import SearchSpec, TrialState
from kiln_api.status import Phase, ProgressStatus, TrainingJobStatus
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from kiln_api.topology import GPU, TrainingTopology, training_topology
from pydantic import ValidationError
from ray import tune

from .driver import EXIT_FAILED, EXIT_OK, JobRunner
from .driver_options import DriverOptions
from .evaluation_run import REPORT_FILE, REPORT_FILES, report_status
from .events import EpochEnded, Event
from .job_file import validation_message
from .search_plot import plot_search
from .search_report import (
    TrialRecord,
    best_status,
    best_trial,
    ended_state,
    metrics_of,
    render_table,
    search_document,
    search_status,
)
from .search_space import decode_config, num_samples, param_space, scheduler, search_algorithm, total_trials, trial_job
from .status_json import status_document
from .storage import pvc_root_from, resolve_location
from .train_setup import connect_ray
from .worker import write_bytes

log = logging.getLogger("kiln_trainer.search")

# Reported with every epoch, for the driver to tell a pruned trial from one that ended on its own.
EPOCHS_KEY, KILN_STOPPED_KEY = "kiln_epochs", "kiln_stopped"
# A trial that runs a TorchTrainer only drives it: its workers reserve their own CPUs and GPUs, so
# the trial holds no CPU (the head pod advertises none, a worker pod only its workers'), only
# memory, which Ray counts on every node (a request must hold something).
TRIAL_DRIVER_RESOURCES = {"CPU": 0.0, "memory": float(256 << 20)}


class TrialFailed(RuntimeError):
    """A trial's training ended without success; the message is the run's own reason."""


@dataclass(frozen=True)
class SearchSetup:
    """What every trial needs (shipped to the trial actors by Tune)."""

    job: TrainingJob
    checkpoint_root: str
    out_dir: str
    pvc_root: str
    ray_temp_dir: Optional[str]
    in_process: bool
    python_path: list[str] = field(default_factory=list)


class TuneReporter:
    """A JobRunner listener: every epoch's metrics go to Tune (whose scheduler may stop the trial)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def __call__(self, event: Event, status: TrainingJobStatus) -> None:
        if isinstance(event, EpochEnded):
            stopped = bool((event.early_stopping or {}).get("stopped"))
            tune.report({"epoch": event.epoch, **event.metrics, EPOCHS_KEY: self.epochs, KILN_STOPPED_KEY: stopped})


def run_trial(config: dict[str, Any], setup: SearchSetup) -> None:
    """One trial: the job with the trial's values, trained by Kiln's own driver code."""
    trial_id = tune.get_context().get_trial_id()
    search = setup.job.spec.search
    assert search is not None
    try:
        job = trial_job(setup.job, decode_config(search, config))
    except ValidationError as exc:
        raise TrialFailed(f"the trial's values do not make a valid job: {validation_message(exc)}") from None
    model_dir = os.path.join(setup.out_dir, "trials", trial_id)
    os.makedirs(model_dir, exist_ok=True)
    options = DriverOptions(
        checkpoint_dir=os.path.join(setup.checkpoint_root, "trials", trial_id),
        pvc_root=setup.pvc_root,
        model_path=os.path.join(model_dir, "model.pt"),
        port=job.spec.metrics.port,
        port_fallback=True,
        ray_temp_dir=setup.ray_temp_dir,
        in_process=setup.in_process,
        python_path=setup.python_path,
        listeners=[TuneReporter(job.spec.hyperparameters.epochs)],
    )
    runner = JobRunner(job, options)
    if runner.run() != EXIT_OK:
        raise TrialFailed(runner.status.message or "training failed")


def trial_resources(topology: TrainingTopology, in_process: bool) -> dict[str, float]:
    if not in_process:
        return dict(TRIAL_DRIVER_RESOURCES)
    return {"CPU": topology.cpus_per_worker, **({"GPU": 1.0} if topology.use_gpu else {})}


# The tables of the searches this process drives, by experiment directory. A restored Tuner brings
# back its callbacks from tuner.pkl: the copy it unpickles must become the table this driver
# draws and reports with, not a detached one.
_LIVE_TABLES: dict[str, TrialTable] = {}


class TrialTable(tune.Callback):
    """Follows the trials (records kept in start order) and draws the live table of them."""

    def __init__(self, search: SearchSpec, stream: Optional[TextIO], on_change: Optional[Callable[[list[TrialRecord]], None]] = None,
                 key: str = "") -> None:
        self.search, self.stream, self.on_change, self.key = search, stream, on_change, key
        self.records: dict[str, TrialRecord] = {}
        self._ends: dict[str, tuple[int, bool]] = {}
        self._drawn = 0
        self.tty = stream is not None and stream.isatty()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (tuner.pkl) for a restore: the terminal and the driver's
        # status hook stay with this process.
        return {**self.__dict__, "stream": None, "on_change": None, "tty": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        live = _LIVE_TABLES.get(state.get("key", ""))
        self.__dict__ = live.__dict__ if live is not None else state

    def seed(self, records: list[TrialRecord], ends: dict[str, tuple[int, bool]]) -> None:
        """Trials an earlier driver of this search saw (a restored search's callbacks hear nothing of them)."""
        for record in records:
            self.records.setdefault(record.trial, record)
        for trial, end in ends.items():
            self._ends.setdefault(trial, end)

    def _record(self, trial: Any) -> TrialRecord:
        if trial.trial_id not in self.records:
            self.records[trial.trial_id] = TrialRecord(trial.trial_id, decode_config(self.search, trial.config))
        return self.records[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial).state = TrialState.running
        self._draw(changed=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._record(trial)
        latest = metrics_of(result, self.search.metric)
        # A trial restarted after a driver's loss reports its epochs again from where its checkpoint was.
        record.history = [h for h in record.history if h["epoch"] < latest["epoch"]] + [latest]
        self._ends[trial.trial_id] = (int(result.get(EPOCHS_KEY, 0)), bool(result.get(KILN_STOPPED_KEY)))
        self._draw(changed=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        epochs_total, stopped = self._ends.get(trial.trial_id, (0, False))
        record.state = ended_state(record.epochs, epochs_total, stopped)
        self._draw(changed=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record.state = TrialState.failed
        record.error = trial_error_text(str(getattr(trial, "error_msg", "") or ""))
        self._draw(changed=True)

    def _draw(self, changed: bool) -> None:
        """On a terminal the table is redrawn in place; in a log it is printed when a trial changes state."""
        if self.on_change is not None:
            self.on_change(sorted(self.records.values(), key=lambda r: r.trial))
        if self.stream is None or (not self.tty and not changed):
            return
        lines = render_table(list(self.records.values()), self.search.metric)
        prefix = f"\x1b[{self._drawn}F\x1b[J" if self.tty and self._drawn else ""
        self.stream.write(prefix + "\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)


def trial_error_text(text: str) -> str:
    """The line of a trial's error that says why (TrialFailed's message), not its traceback."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = next((line for line in reversed(lines) if "TrialFailed" in line), lines[-1] if lines else "trial failed")
    return message.split("TrialFailed:", 1)[-1].strip()[:1000]


@dataclass
class SearchOutcome:
    code: int
    records: list[TrialRecord]
    document: dict[str, Any]
    status: TrainingJobStatus


@dataclass(frozen=True)
class SearchPlace:
    """Where a search runs: the Ray cluster (an address, or None for a local one holding `node`)
    and where its trials' checkpoints go (None: the job's storage, else `<out>/checkpoints`)."""

    node: dict[str, float] = field(default_factory=dict)
    ray_address: Optional[str] = None
    checkpoint_root: Optional[str] = None
    pvc_root: str = PVC_MOUNT_ROOT


def run_search(job: TrainingJob, out_dir: str, *, node: Optional[dict[str, float]] = None, stream: TextIO = sys.stderr,
               use_ray: bool = False, python_path: Optional[list[str]] = None, place: Optional[SearchPlace] = None,
               on_change: Optional[Callable[[list[TrialRecord]], None]] = None) -> SearchOutcome:
    """Run the job's search on a local Ray cluster (or the one this process has, or `place`'s) and
    write its outputs."""
    from .local import streams_data

    search = job.spec.search
    assert search is not None
    place = place or SearchPlace(node=node or {}, pvc_root=pvc_root_from(os.environ))
    node = place.node
    os.makedirs(out_dir, exist_ok=True)
    pvc_root = place.pvc_root
    storage = job.spec.checkpoint.storage
    checkpoint_root = place.checkpoint_root or (
        resolve_location(storage, pvc_root) if storage else os.path.join(out_dir, "checkpoints"))
    topology = training_topology(job.spec.workers)
    in_process = topology.num_workers == 1 and not use_ray and not streams_data(job, pvc_root)
    own_tmp = not os.environ.get("KILN_RAY_TEMP_DIR")
    ray_tmp = os.environ.get("KILN_RAY_TEMP_DIR") or tempfile.mkdtemp(prefix="kiln-", dir="/tmp")
    setup = SearchSetup(job, checkpoint_root, out_dir, pvc_root, ray_tmp, in_process, python_path or [])
    experiment = os.path.join(checkpoint_root, "tune", f"{job.name}-search")
    table = TrialTable(search, stream, on_change, key=experiment)
    owns_ray = connect_ray(DriverOptions(checkpoint_dir=checkpoint_root, ray_address=place.ray_address, ray_temp_dir=ray_tmp,
                                         local_num_cpus=int(node.get("CPU", 0)) or None, local_num_gpus=int(node.get(GPU, 0)),
                                         local_object_store_bytes=local_object_store_bytes(job.spec)))
    _LIVE_TABLES[experiment] = table
    try:
        _open_tuner(job, setup, table, trial_resources(topology, in_process), experiment).fit()
    finally:
        _LIVE_TABLES.pop(experiment, None)
        if owns_ray:
            import ray

            ray.shutdown()
        if own_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    # Trial ids end in their creation index (`<experiment>_00003`): the searcher's order, whatever ran first.
    records = sorted(table.records.values(), key=lambda r: r.trial)
    return _conclude(job, search, records, out_dir, checkpoint_root)


def _open_tuner(job: TrainingJob, setup: SearchSetup, table: TrialTable, resources: dict[str, float], experiment: str) -> Any:
    """A new search, or the one an earlier driver of this job left in storage (its head pod was lost,
    or `kiln run` was stopped): Tune's experiment restore keeps the finished trials' results and does
    not run them again; the unfinished ones start again and resume from their own Kiln checkpoints."""
    search = job.spec.search
    assert search is not None
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
    if not tune.Tuner.can_restore(experiment):
        return _tuner(job, setup, table, trainable)
    log.warning("resuming the search from %s", experiment)
    if table.stream is not None:
        table.stream.write(f"kiln: resuming the search from {experiment}: finished trials are not run again\n")
    tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
    table.seed(*restored_trials(tuner.get_results(), search))
    return tuner


def restored_trials(results: Any, search: SearchSpec) -> tuple[list[TrialRecord], dict[str, tuple[int, bool]]]:
    """The trials of a restored experiment as records, from the results Tune kept for them."""
    records, ends = [], {}
    for result in results:
        last, frame = result.metrics or {}, result.metrics_dataframe
        if not last.get("trial_id") or frame is None or frame.empty:
            continue  # never reported: it runs (again) and its callbacks record it
        try:
            parameters = decode_config(search, result.config or {})
        except (KeyError, ValueError):
            continue  # Tune kept no config for it: the same
        rows = frame.to_dict("records")
        record = TrialRecord(str(last["trial_id"]), parameters)
        record.history = [metrics_of({k: v for k, v in row.items() if v == v}, search.metric) for row in rows]  # v == v: not NaN
        end = (int(last.get(EPOCHS_KEY, 0)), bool(last.get(KILN_STOPPED_KEY)))
        if result.error is not None:
            record.state, record.error = TrialState.failed, trial_error_text(str(result.error))
        else:
            record.state = ended_state(record.epochs, *end)
        records.append(record)
        ends[record.trial] = end
    return records, ends


def _tuner(job: TrainingJob, setup: SearchSetup, table: TrialTable, trainable: Any) -> Any:
    search = job.spec.search
    assert search is not None
    return tune.Tuner(
        trainable,
        param_space=param_space(search),
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=search.effective_mode, search_alg=search_algorithm(search),
            scheduler=scheduler(search, job.spec.hyperparameters.epochs), num_samples=num_samples(search),
            # A stopped trial's actor must go: an in-process trial's training thread lives in it.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"{job.name}-search", storage_path=os.path.join(setup.checkpoint_root, "tune"), verbose=0,
            callbacks=[table], failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _conclude(job: TrainingJob, search: SearchSpec, records: list[TrialRecord], out_dir: str,
              checkpoint_root: str) -> SearchOutcome:
    """search.json, search.png, status.json and the best trial's model as the job's model."""
    metric, mode = search.metric, search.effective_mode
    document = search_document(search, records)
    write_bytes(os.path.join(out_dir, "search.json"), json.dumps(document, indent=2).encode())
    plot_search(records, metric, mode, os.path.join(out_dir, "search.png"), title=f"{job.name}: {search.algorithm.value} search")
    best = best_trial(records, metric, mode)
    checkpoints = {r.trial: os.path.join(checkpoint_root, "trials", r.trial) for r in records}
    failed = sum(r.state == TrialState.failed for r in records)
    if best is not None:
        # The best trial's model and its evaluation report (evaluation_run.py) become the job's.
        for name in ("model.pt", *REPORT_FILES):
            if os.path.exists(trial_file := os.path.join(out_dir, "trials", best.trial, name)):
                shutil.copyfile(trial_file, os.path.join(out_dir, name))
    if best is None or failed > search.max_failed_trials:
        reason = "NoSuccessfulTrial" if best is None else "TooManyFailedTrials"
        message = (f"{failed} trials failed (spec.search.maxFailedTrials: {search.max_failed_trials})"
                   if best is not None else "no trial reported the search metric")
        phase, code = Phase.failed, EXIT_FAILED
    else:
        value = document["best"]["value"]
        reason, message = "SearchSucceeded", f"best trial {best.trial}: {metric}={value:.4f}"
        phase, code = Phase.succeeded, EXIT_OK
    status = TrainingJobStatus(phase=phase, reason=reason, message=message, progress=ProgressStatus.of_search(),
                               best=best_status(search, records, checkpoints),
                               search=search_status(search, records, total_trials(search), checkpoints))
    status.evaluation = report_status(os.path.join(out_dir, REPORT_FILE)) if best is not None else None
    write_bytes(os.path.join(out_dir, "status.json"), json.dumps(status_document(status), indent=2).encode())
    return SearchOutcome(code, records, document, status)


def run_search_cli(job: TrainingJob, output: str, *, node: dict[str, float], manifest_dir: str,
                   use_ray: bool = False) -> int:
    """`kiln run` of a job with spec.search."""
    from .local_paths import with_absolute_paths

    job = with_absolute_paths(job, os.getcwd())
    out_dir = os.path.join(os.path.abspath(output), job.name)
    search = job.spec.search
    assert search is not None
    print(f"kiln: {search.algorithm.value} search over {', '.join(search.parameters)}: "
          f"{total_trials(search)} trials, {search.max_concurrent_trials} at a time", file=sys.stderr)
    outcome = run_search(job, out_dir, node=node, use_ray=use_ray,
                         python_path=[manifest_dir] if job.spec.entrypoint else [])
    print(f"kiln: {outcome.status.phase.value} ({outcome.status.reason}): {outcome.status.message}; "
          f"results in {out_dir}", file=sys.stderr)
    return outcome.code
