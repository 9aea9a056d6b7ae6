"""spec.search -> Ray Tune: domains for every distribution, grid enumeration, searchers, schedulers, trial jobs."""

from __future__ import annotations

from typing import Any

import pytest
from kiln_api import TrainingJob
from kiln_api.search import SearchSpec
from kiln_trainer.search_space import (
    decode_config,
    grid_size,
    num_samples,
    param_space,
    scheduler,
    search_algorithm,
    total_trials,
    trial_job,
)
from pydantic import ValidationError
from ray.tune.search.sample import Categorical, Float, Integer


def _search(**fields: Any) -> SearchSpec:
    return SearchSpec.model_validate({"parameters": {"model.dropout": {"uniform": [0.0, 0.5]}}, **fields})


def _job(spec: dict[str, Any]) -> TrainingJob:
    return TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                       "metadata": {"name": "s"}, "spec": spec})


@pytest.mark.parametrize(("distribution", "kind", "bounds", "log"), [
    ({"uniform": [0.0, 0.5]}, Float, (0.0, 0.5), False),
    ({"loguniform": [1e-4, 1e-1]}, Float, (1e-4, 1e-1), True),
    ({"randint": [1, 5]}, Integer, (1, 5), False),
])
def test_continuous_and_integer_distributions_map_to_tune_domains(distribution, kind, bounds, log):
    path = "hyperparameters.epochs" if "randint" in distribution else "hyperparameters.learningRate"
    domain = param_space(_search(parameters={path: distribution}))[path]
    assert isinstance(domain, kind)
    assert (domain.lower, domain.upper) == bounds
    assert (str(domain.get_sampler()) == "LogUniform") == log


def test_choice_maps_to_a_categorical_of_json_values_and_decodes_back():
    search = _search(parameters={"model.hiddenUnits": {"choice": [[64], [128, 64]]},
                                 "hyperparameters.optimizer": {"choice": ["adam", "sgd"]}})
    space = param_space(search)
    assert isinstance(space["model.hiddenUnits"], Categorical)
    assert space["model.hiddenUnits"].categories == ["[64]", "[128, 64]"]
    decoded = decode_config(search, {"model.hiddenUnits": "[128, 64]", "hyperparameters.optimizer": '"sgd"'})
    assert decoded == {"model.hiddenUnits": [128, 64], "hyperparameters.optimizer": "sgd"}


def test_grid_enumerates_every_combination_of_choices_once():
    search = _search(algorithm="grid", parameters={"hyperparameters.learningRate": {"choice": [0.1, 0.01]},
                                                   "hyperparameters.batchSize": {"choice": [32, 64, 128]}})
    space = param_space(search)
    assert space["hyperparameters.learningRate"] == {"grid_search": ["0.1", "0.01"]}
    assert (grid_size(search), total_trials(search), num_samples(search)) == (6, 6, 1)
    from ray.tune.search.variant_generator import generate_variants

    configs = [decode_config(search, variant["config"]) for _, variant in generate_variants({"config": space})]
    assert sorted((c["hyperparameters.learningRate"], c["hyperparameters.batchSize"]) for c in configs) == sorted(
        (lr, b) for lr in (0.1, 0.01) for b in (32, 64, 128))


def test_random_search_draws_max_trials():
    search = _search(algorithm="random", maxTrials=7)
    assert (num_samples(search), total_trials(search)) == (7, 7)


@pytest.mark.parametrize(("algorithm", "searcher"), [("grid", "BasicVariantGenerator"),
                                                     ("random", "BasicVariantGenerator"),
                                                     ("bayesian", "OptunaSearch")])
def test_each_algorithm_uses_tunes_own_searcher_limited_to_max_concurrent_trials(algorithm, searcher):
    parameters = {"model.dropout": {"choice": [0.0, 0.2]}}
    found = search_algorithm(_search(algorithm=algorithm, parameters=parameters, maxConcurrentTrials=3))
    assert type(getattr(found, "searcher", found)).__name__ == searcher
    assert found.max_concurrent == 3


def _proposals(search: SearchSpec, count: int) -> list[dict[str, Any]]:
    searcher = search_algorithm(search).searcher  # OptunaSearch itself, without the concurrency limit
    searcher.set_search_properties("val_loss", "min", param_space(search))
    return [searcher.suggest(f"t{i}") for i in range(count)]


def test_bayesian_searcher_is_seeded_tpe_the_same_seed_proposing_the_same_trials():
    search = _search(algorithm="bayesian", seed=5, parameters={"hyperparameters.learningRate": {"loguniform": [1e-4, 1e-1]},
                                                               "model.hiddenUnits": {"choice": [[64], [128, 64]]}})
    assert type(search_algorithm(search).searcher._sampler).__name__ == "TPESampler"
    first = _proposals(search, 3)
    assert first == _proposals(search, 3)
    assert first != _proposals(search.model_copy(update={"seed": 6}), 3)


@pytest.mark.parametrize(("early_stopping", "expected"), [
    (None, "FIFOScheduler"),
    ({"type": "none"}, "FIFOScheduler"),
    ({"type": "asha", "gracePeriod": 2, "reductionFactor": 3}, "AsyncHyperBandScheduler"),
    ({"type": "median", "gracePeriod": 2}, "MedianStoppingRule"),
])
def test_early_stopping_maps_to_tune_schedulers(early_stopping, expected):
    fields = {"earlyStopping": early_stopping} if early_stopping else {}
    assert type(scheduler(_search(**fields), max_epochs=6)).__name__ == expected


def test_asha_counts_epochs_up_to_the_jobs_epochs():
    asha = scheduler(_search(earlyStopping={"type": "asha", "gracePeriod": 2, "reductionFactor": 3}), max_epochs=9)
    assert asha._time_attr == "epoch"
    assert asha._max_t == 9 and asha._reduction_factor == 3
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [6, 2]


def test_trial_job_sets_the_values_at_their_paths_and_drops_search():
    job = _job({"model": {"hiddenUnits": [32]}, "search": {"parameters": {"model.hiddenUnits": {"choice": [[64]]}}}})
    trial = trial_job(job, {"hyperparameters.learningRate": 0.05, "model.hiddenUnits": [128, 64],
                            "hyperparameters.lrSchedule.gamma": 0.5, "model.dropout": 0.25})
    assert trial.spec.search is None
    assert trial.spec.hyperparameters.learning_rate == 0.05
    assert trial.spec.hyperparameters.lr_schedule.gamma == 0.5
    assert trial.spec.model.hidden_units == [128, 64] and trial.spec.model.dropout == 0.25
    assert trial.spec.hyperparameters.seed == job.spec.hyperparameters.seed


def test_trial_job_creates_the_model_when_the_job_has_none():
    trial = trial_job(_job({}), {"model.dropout": 0.1})
    assert trial.spec.model is not None and trial.spec.model.dropout == 0.1


def test_trial_job_refuses_a_value_the_field_refuses_naming_it():
    with pytest.raises(ValidationError, match="dropout"):
        trial_job(_job({}), {"model.dropout": 1.0})


def test_a_trial_of_one_worker_holds_its_cpus_and_a_torchtrainer_trial_holds_no_cpu():
    from kiln_api.topology import training_topology
    from kiln_trainer.search_run import trial_resources

    one = training_topology(_job({"workers": {"replicas": 1, "cpusPerWorker": 2}}).spec.workers)
    assert trial_resources(one, in_process=True) == {"CPU": 2.0}
    many = training_topology(_job({"workers": {"replicas": 2}}).spec.workers)
    resources = trial_resources(many, in_process=False)
    assert resources["CPU"] == 0.0 and resources["memory"] > 0
