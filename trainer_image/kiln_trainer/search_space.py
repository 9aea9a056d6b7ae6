"""spec.search -> Ray Tune: the parameter space, the search algorithm, the scheduler, and a trial's job.

Pure mappings (no Ray cluster, no training): search_run.py is the thin shell that runs them.
Choice values travel through Tune as JSON strings: Optuna's categorical distribution takes
only scalars, and `model.hiddenUnits` chooses between lists.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kiln_api import TrainingJob
from kiln_api.search import Algorithm, Distribution, SearchSpec, StoppingType

# Tune reports results with this attribute as the trial's "time": epochs completed.
TIME_ATTR = "epoch"


def encode_choice(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def tune_domain(distribution: Distribution, grid: bool) -> Any:
    """The Tune domain (or grid) of one parameter."""
    from ray import tune

    if distribution.choice is not None:
        values = [encode_choice(v) for v in distribution.choice]
        return tune.grid_search(values) if grid else tune.choice(values)
    if grid:
        raise ValueError("grid search enumerates choices only")
    if distribution.uniform is not None:
        return tune.uniform(*distribution.uniform)
    if distribution.loguniform is not None:
        return tune.loguniform(*distribution.loguniform)
    low, high = distribution.randint or (0, 1)
    return tune.randint(low, high)


def param_space(search: SearchSpec) -> dict[str, Any]:
    """Tuner's `param_space`: one entry per path (dots are plain characters to Tune)."""
    grid = search.algorithm == Algorithm.grid
    return {path: tune_domain(d, grid) for path, d in search.parameters.items()}


def decode_config(search: SearchSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config back to the values it sets, keyed by the paths of spec.search.parameters."""
    values: dict[str, Any] = {}
    for path, distribution in search.parameters.items():
        value = config[path]
        if distribution.choice is not None:
            value = json.loads(value)
        elif distribution.randint is not None:
            value = int(value)
        else:
            value = float(value)
        values[path] = value
    return values


def grid_size(search: SearchSpec) -> int:
    """Trials a grid runs: the product of the choices' lengths."""
    return math.prod(len(d.choice or ()) for d in search.parameters.values())


def total_trials(search: SearchSpec) -> int:
    return grid_size(search) if search.algorithm == Algorithm.grid else search.max_trials


def num_samples(search: SearchSpec) -> int:
    """TuneConfig's num_samples: a grid is enumerated once; other algorithms draw maxTrials."""
    return 1 if search.algorithm == Algorithm.grid else search.max_trials


def search_algorithm(search: SearchSpec) -> Any:
    """Tune's own searchers: BasicVariantGenerator (grid, random), OptunaSearch with seeded TPE (bayesian),
    each holding maxConcurrentTrials itself (Tune ignores TuneConfig's limit for a BasicVariantGenerator)."""
    if search.algorithm == Algorithm.bayesian:
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna_search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=search.seed))
        return ConcurrencyLimiter(optuna_search, max_concurrent=search.max_concurrent_trials)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=search.seed, max_concurrent=search.max_concurrent_trials)


def scheduler(search: SearchSpec, max_epochs: int) -> Any:
    """Tune's early-stopping scheduler for spec.search.earlyStopping (FIFO: none)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    stopping = search.early_stopping
    if stopping is None or stopping.type == StoppingType.none:
        return FIFOScheduler()
    if stopping.type == StoppingType.asha:
        return ASHAScheduler(time_attr=TIME_ATTR, max_t=max_epochs, grace_period=min(stopping.grace_period, max_epochs),
                             reduction_factor=stopping.reduction_factor)
    return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=stopping.grace_period, min_samples_required=2)


def _set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def trial_job(job: TrainingJob, values: dict[str, Any]) -> TrainingJob:
    """The job one trial trains: `values` set at their paths, without `search` (a plain run).

    Validated as any manifest is: a value the field refuses (a dropout of 1.0) raises
    pydantic's ValidationError naming the field."""
    document = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    spec = document["spec"]
    spec.pop("search", None)
    for path, value in values.items():
        _set_path(spec, path, value)
    return TrainingJob.model_validate(document)
