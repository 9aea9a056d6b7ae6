"""`spec.search` and `status.search`: hyperparameter search over one job's settings, run by Ray Tune.

A search names parameters by their path in the spec (`hyperparameters.learningRate`,
`model.hiddenUnits`) and gives each one distribution. Which paths exist, and which distributions
each one admits, is declared here once and enforced both by pydantic and (as CEL) by the CRD.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from .base import ApiModel, CrossFieldRule
from .job_checks import BUILTIN_METRICS_CEL, METRICS_MESSAGE, builtin_metrics, cel_list

# Paths a search may vary, by the distributions they admit. Continuous distributions only fit
# float fields, randint only integer fields; every path takes `choice`.
FLOAT_PATHS = (
    "hyperparameters.learningRate",
    "hyperparameters.momentum",
    "hyperparameters.weightDecay",
    "hyperparameters.l1",
    "hyperparameters.gradientClipNorm",
    "hyperparameters.lrSchedule.gamma",
    "model.dropout",
)
INTEGER_PATHS = (
    "hyperparameters.epochs",
    "hyperparameters.batchSize",
    "hyperparameters.gradientAccumulationSteps",
    "hyperparameters.lrSchedule.warmupEpochs",
    "hyperparameters.lrSchedule.stepSize",
)
CHOICE_ONLY_PATHS = (
    "hyperparameters.optimizer",
    "hyperparameters.lrSchedule.type",
    "model.architecture",
    "model.hiddenUnits",
    "model.activation",
    "model.batchNorm",
)
PARAMETER_PATHS = FLOAT_PATHS + INTEGER_PATHS + CHOICE_ONLY_PATHS
MAX_PARAMETERS = 16
MAX_CHOICES = 64
# The most worker pods one job may ask for (workers.replicas' own bound): a search's concurrent
# trials share one Ray cluster, so together they must stay within it.
MAX_CLUSTER_WORKERS = 1024
# Trials listed in status.search.trials (best first, then running): a status must stay small.
MAX_STATUS_TRIALS = 20


class Algorithm(str, Enum):
    grid = "grid"
    random = "random"
    bayesian = "bayesian"


class StoppingType(str, Enum):
    asha = "asha"
    median = "median"
    none = "none"


def _any_json(description: str) -> Any:
    # A choice can be a number, a string, a bool or a list (hiddenUnits): the CRD keeps it as is.
    return Field(description=description, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


ChoiceValue = Annotated[Any, _any_json("One value the parameter may take.")]
Range = Annotated[list[float], Field(min_length=2, max_length=2)]
IntRange = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=2, max_length=2)]
_DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


def _count_set(d: Distribution) -> int:
    return sum(getattr(d, name) is not None for name in _DISTRIBUTIONS)


class Distribution(ApiModel):
    """Where one parameter's values come from: exactly one of choice, uniform, loguniform, randint."""

    choice: Optional[Annotated[list[ChoiceValue], Field(min_length=1, max_length=MAX_CHOICES)]] = Field(
        None, description="These values (grid search tries each one)."
    )
    uniform: Optional[Range] = Field(None, description="[min, max]: a float drawn uniformly (float fields only).")
    loguniform: Optional[Range] = Field(None, description="[min, max], min > 0: a float drawn uniformly in log space (float fields only).")
    randint: Optional[IntRange] = Field(None, description="[min, max): an integer drawn uniformly (integer fields only).")

    cross_field_rules = (
        CrossFieldRule(
            cel=" + ".join(f"(has(self.{name}) ? 1 : 0)" for name in _DISTRIBUTIONS) + " == 1",
            message="set exactly one of choice, uniform, loguniform, randint",
            check=lambda d: _count_set(d) == 1,
        ),
        CrossFieldRule(
            cel="!has(self.uniform) || self.uniform[0] < self.uniform[1]",
            message="min must be smaller than max",
            field_path=".uniform",
            check=lambda d: d.uniform is None or d.uniform[0] < d.uniform[1],
        ),
        CrossFieldRule(
            cel="!has(self.loguniform) || self.loguniform[0] < self.loguniform[1]",
            message="min must be smaller than max",
            field_path=".loguniform",
            check=lambda d: d.loguniform is None or d.loguniform[0] < d.loguniform[1],
        ),
        CrossFieldRule(
            cel="!has(self.loguniform) || self.loguniform[0] > 0.0",
            message="min must be greater than 0 (a log scale starts above 0)",
            field_path=".loguniform",
            check=lambda d: d.loguniform is None or d.loguniform[0] > 0.0,
        ),
        CrossFieldRule(
            cel="!has(self.randint) || self.randint[0] < self.randint[1]",
            message="min must be smaller than max (max is excluded)",
            field_path=".randint",
            check=lambda d: d.randint is None or d.randint[0] < d.randint[1],
        ),
    )

    @property
    def kind(self) -> str:
        return next(name for name in _DISTRIBUTIONS if getattr(self, name) is not None)


class SearchStoppingSpec(ApiModel):
    """Stop unpromising trials early (Ray Tune's schedulers), measured in epochs."""

    type: StoppingType = Field(StoppingType.asha, description="asha (successive halving), median (stop below the running median) or none.")
    grace_period: int = Field(1, ge=1, le=100_000, description="Epochs every trial runs before it may be stopped.")
    reduction_factor: int = Field(3, ge=2, le=100, description="asha: keep 1 in this many trials at each rung.")


def _paths_all(cel_condition: str) -> str:
    return f"self.parameters.all(k, {cel_condition})"


def _continuous(d: Distribution) -> bool:
    return d.uniform is not None or d.loguniform is not None


PATHS_RULE = {
    "rule": f"self.all(k, k in {cel_list(PARAMETER_PATHS)})",
    "message": "unknown parameter path; must be one of " + ", ".join(PARAMETER_PATHS),
}


class SearchSpec(ApiModel):
    """Hyperparameter search: run trials of this job with varied settings and keep the best."""

    algorithm: Algorithm = Field(Algorithm.random, description="grid (every combination of the choices), random, or bayesian (Optuna's TPE).")
    metric: str = Field("val_loss", min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Metric that ranks trials (e.g. val_accuracy).")
    mode: Optional[Literal["min", "max"]] = Field(None, description="min or max; defaults to min for losses/errors and max otherwise.")
    max_trials: int = Field(10, ge=1, le=10_000, description="Trials to run (random, bayesian); grid runs each combination once.")
    max_concurrent_trials: int = Field(1, ge=1, le=MAX_CLUSTER_WORKERS, description="Trials running at once; each uses workers.replicas workers.")
    max_failed_trials: int = Field(0, ge=0, le=10_000, description="Failed trials tolerated before the search fails.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the search algorithm: the same seed proposes the same trials.")
    parameters: dict[str, Distribution] = Field(
        ..., min_length=1, max_length=MAX_PARAMETERS,
        description="Distribution of each searched setting, keyed by its path in the spec: " + ", ".join(PARAMETER_PATHS) + ".",
        json_schema_extra={"x-kubernetes-validations": [PATHS_RULE]},
    )
    early_stopping: Optional[SearchStoppingSpec] = Field(None, description="Stop bad trials early; absent runs every trial to its end.")

    cross_field_rules = (
        CrossFieldRule(
            cel=_paths_all(f"(!has(self.parameters[k].uniform) && !has(self.parameters[k].loguniform)) || k in {cel_list(FLOAT_PATHS)}"),
            message="uniform and loguniform fit float fields only (" + ", ".join(FLOAT_PATHS) + "); use choice or randint",
            field_path=".parameters",
            check=lambda s: all(path in FLOAT_PATHS for path, d in s.parameters.items() if _continuous(d)),
        ),
        CrossFieldRule(
            cel=_paths_all(f"!has(self.parameters[k].randint) || k in {cel_list(INTEGER_PATHS)}"),
            message="randint fits integer fields only (" + ", ".join(INTEGER_PATHS) + "); use choice",
            field_path=".parameters",
            check=lambda s: all(path in INTEGER_PATHS for path, d in s.parameters.items() if d.randint is not None),
        ),
        CrossFieldRule(
            cel="self.algorithm != 'grid' || " + _paths_all("has(self.parameters[k].choice)"),
            message="grid search enumerates choices only; a uniform, loguniform or randint parameter needs algorithm random or bayesian",
            field_path=".parameters",
            check=lambda s: s.algorithm != Algorithm.grid or all(d.choice is not None for d in s.parameters.values()),
        ),
    )

    @field_validator("parameters")
    @classmethod
    def _known_paths(cls, parameters: dict[str, Distribution]) -> dict[str, Distribution]:
        # The same rule as PATHS_RULE, which the CRD carries on the map (its keys are not typed).
        if any(path not in PARAMETER_PATHS for path in parameters):
            raise PydanticCustomError("cross_field", "{message}", {"message": PATHS_RULE["message"], "field_path": ""})
        return parameters

    @property
    def effective_mode(self) -> str:
        from .spec import default_mode_for

        return self.mode or default_mode_for(self.metric).value


# --------------------------------------------------------------------------- rules on the whole spec

_TRAINING_WORKERS_CEL = "(self.workers.replicas * (self.workers.gpusPerWorker > 0 ? self.workers.gpusPerWorker : 1))"
_BATCH = "self.search.parameters['hyperparameters.batchSize']"


def _training_workers(spec: Any) -> int:
    return spec.workers.replicas * max(spec.workers.gpus_per_worker, 1)


def _batch_sizes_fit(spec: Any) -> bool:
    batch = spec.search.parameters.get("hyperparameters.batchSize")
    if batch is None:
        return True
    low = _training_workers(spec)
    if batch.choice is not None:
        return all(isinstance(b, int) and not isinstance(b, bool) and b >= low for b in batch.choice)
    return batch.randint is None or batch.randint[0] >= low


SPEC_RULES = (
    CrossFieldRule(
        cel=f"!has(self.search) || self.search.maxConcurrentTrials * self.workers.replicas <= {MAX_CLUSTER_WORKERS}",
        message=f"maxConcurrentTrials x workers.replicas worker pods must not exceed {MAX_CLUSTER_WORKERS} (the trials share one Ray cluster)",
        field_path=".search.maxConcurrentTrials",
        check=lambda s: s.search is None or s.search.max_concurrent_trials * s.workers.replicas <= MAX_CLUSTER_WORKERS,
    ),
    CrossFieldRule(
        cel=f"!has(self.search) || !('hyperparameters.batchSize' in self.search.parameters) || "
        f"((!has({_BATCH}.choice) || {_BATCH}.choice.all(b, b >= {_TRAINING_WORKERS_CEL})) && "
        f"(!has({_BATCH}.randint) || {_BATCH}.randint[0] >= {_TRAINING_WORKERS_CEL}))",
        message="every batch size a trial may get must be an integer of at least the number of training workers, "
        "workers.replicas x max(gpusPerWorker, 1) (each trial splits its batch across them)",
        field_path=".search.parameters",
        check=lambda s: s.search is None or _batch_sizes_fit(s),
    ),
    CrossFieldRule(
        cel=f"!has(self.search) || has(self.entrypoint) || self.search.metric in {BUILTIN_METRICS_CEL}",
        message=METRICS_MESSAGE,
        field_path=".search.metric",
        check=lambda s: s.search is None or s.entrypoint is not None or s.search.metric in builtin_metrics(s.data),
    ),
    CrossFieldRule(
        cel="!has(self.search) || !self.search.metric.startsWith('val_') || self.data.split.validation > 0.0",
        message="a search on a val_ metric needs a validation split > 0",
        field_path=".data.split.validation",
        check=lambda s: s.search is None or not s.search.metric.startswith("val_") or s.data.split.validation > 0.0,
    ),
    CrossFieldRule(
        cel="!has(self.search) || !has(self.entrypoint) || "
        "self.search.parameters.all(k, !k.startsWith('model.'))",
        message="model.* parameters need the built-in model; this job has an entrypoint",
        field_path=".search.parameters",
        check=lambda s: s.search is None or s.entrypoint is None or not any(p.startswith("model.") for p in s.search.parameters),
    ),
)


# --------------------------------------------------------------------------- status


class TrialState(str, Enum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    pruned = "Pruned"
    failed = "Failed"


class TrialStatus(ApiModel):
    """One trial of the search."""

    trial: str = Field(..., description="Trial id.")
    parameters: dict[str, str] = Field(default_factory=dict, description="Its parameter values, keyed by path, each as JSON.")
    state: TrialState = Field(TrialState.pending, description="Pending, Running, Succeeded, Pruned or Failed.")
    epochs: int = Field(0, ge=0, description="Epochs it has reported.")
    value: Optional[float] = Field(None, description="Its best value of the search metric so far.")


class SearchBestStatus(ApiModel):
    """The best trial so far by the search metric."""

    trial: str = Field(..., description="Trial id.")
    parameters: dict[str, str] = Field(default_factory=dict, description="Its parameter values, keyed by path, each as JSON.")
    value: float = Field(..., description="Its best value of the search metric.")
    checkpoint: Optional[str] = Field(None, description="Location of its best checkpoint.")


class SearchStatus(ApiModel):
    """Progress of a hyperparameter search."""

    metric: str = Field(..., description="Metric that ranks trials.")
    total: int = Field(0, ge=0, description="Trials the search will run (grid: the number of combinations).")
    running: int = Field(0, ge=0, description="Trials running.")
    succeeded: int = Field(0, ge=0, description="Trials that ran to their end.")
    pruned: int = Field(0, ge=0, description="Trials stopped early by the scheduler.")
    failed: int = Field(0, ge=0, description="Trials that failed.")
    summary: str = Field("0/0", description="finished/total trials, for `kubectl get`.")
    best: Optional[SearchBestStatus] = Field(None, description="Best trial so far.")
    trials: list[TrialStatus] = Field(default_factory=list, max_length=MAX_STATUS_TRIALS, description=f"The best trials and the running ones, at most {MAX_STATUS_TRIALS}.")


# --------------------------------------------------------------------------- cluster sizing


def cluster_replicas(spec: Any) -> int:
    """Worker pods of the job's Ray cluster: workers.replicas, times maxConcurrentTrials for a search
    (its trials share the one cluster, which stays up for the whole search)."""
    replicas = spec.workers.replicas
    return replicas * spec.search.max_concurrent_trials if spec.search is not None else replicas


def cluster_workers(spec: Any) -> Any:
    """spec.workers as the cluster is sized: `cluster_replicas` worker pods of the same shape."""
    return spec.workers.model_copy(update={"replicas": cluster_replicas(spec)})
