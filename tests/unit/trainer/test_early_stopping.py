"""Early stopping follows PyTorch Lightning's EarlyStopping, checked on its golden sequences."""

from __future__ import annotations

import math

import pytest
from kiln_api.spec import EarlyStoppingSpec
from kiln_trainer.early_stopping import EarlyStopping


def first_stop(es: EarlyStopping, values: list[float]) -> int | None:
    for epoch, value in enumerate(values):
        if es.update(value, epoch).should_stop:
            return epoch
    return None


@pytest.mark.parametrize(
    ("losses", "patience", "expected"),
    [
        ([6, 5, 5, 5, 5, 5], 3, 4),
        ([6, 5, 4, 4, 3, 3], 1, 3),
        ([6, 5, 6, 5, 5, 5], 3, 4),
        ([6, 5, 4, 3, 2, 1], 3, None),
        ([5, 5, 5], 0, 1),
    ],
)
def test_stops_after_patience_checks_without_improvement(losses, patience, expected):
    assert first_stop(EarlyStopping(patience=patience), losses) == expected


@pytest.mark.parametrize(
    ("stopping", "divergence", "losses", "expected", "kind"),
    [
        (None, None, [8, 4, 2, 3, 4, 5, 8, 10], 5, "patience"),
        (2.9, None, [9, 8, 7, 6, 5, 6, 4, 3, 2, 1], 8, "threshold"),
        (None, 15.9, [9, 4, 2, 16, 32, 64], 3, "divergence"),
    ],
)
def test_thresholds_match_lightning(stopping, divergence, losses, expected, kind):
    es = EarlyStopping(patience=3, stopping_threshold=stopping, divergence_threshold=divergence)
    for epoch, value in enumerate(losses):
        decision = es.update(value, epoch)
        if decision.should_stop:
            break
    assert epoch == expected
    assert decision.kind == kind
    assert es.stopped_epoch == expected
    assert decision.is_failure == (kind == "divergence")


def test_threshold_comparison_is_strict():
    es = EarlyStopping(patience=10, stopping_threshold=2.0)
    assert not es.update(2.0, 0).should_stop
    assert es.update(1.999, 1).kind == "threshold"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_stops_and_keeps_best(bad):
    es = EarlyStopping(patience=5)
    es.update(1.0, 0)
    decision = es.update(bad, 1)
    assert decision.should_stop and decision.kind == "non_finite" and decision.is_failure
    assert "is not finite" in decision.reason
    assert es.best_score == 1.0


def test_non_finite_is_ignored_when_check_finite_is_off():
    es = EarlyStopping(patience=2, check_finite=False)
    es.update(1.0, 0)
    # NaN compares false, so it counts as a check without improvement.
    assert not es.update(math.nan, 1).should_stop
    assert es.update(math.nan, 2).kind == "patience"


def test_min_delta_requires_improvement_by_more_than_delta():
    es = EarlyStopping(patience=2, min_delta=0.5)
    es.update(10.0, 0)
    assert not es.update(9.6, 1).improved  # only 0.4 better
    assert es.wait_count == 1
    decision = es.update(9.4, 2)  # 0.6 better than 10.0
    assert decision.improved and es.wait_count == 0 and es.best_score == 9.4
    assert "improved by 0.600" in decision.reason


def test_max_mode_improves_upwards():
    es = EarlyStopping(metric="val_accuracy", mode="max", patience=2, min_delta=0.01, stopping_threshold=0.99)
    assert es.update(0.5, 0).improved
    assert not es.update(0.505, 1).improved
    assert es.update(0.7, 2).improved
    assert es.update(0.995, 3).kind == "threshold"


def test_max_mode_divergence_is_falling_below():
    es = EarlyStopping(mode="max", patience=5, divergence_threshold=0.1)
    es.update(0.5, 0)
    assert es.update(0.1, 1).should_stop is False
    assert es.update(0.05, 2).kind == "divergence"


def test_state_dict_round_trip_continues_the_count():
    es = EarlyStopping(patience=3)
    for epoch, value in enumerate([6, 5, 5]):
        es.update(value, epoch)
    restored = EarlyStopping(patience=3)
    restored.load_state_dict(es.state_dict())
    assert restored.wait_count == 1 and restored.best_score == 5
    assert not restored.update(5, 3).should_stop
    assert restored.update(5, 4).kind == "patience"


def test_from_spec_defaults_mode_from_metric_name():
    es = EarlyStopping.from_spec(EarlyStoppingSpec(metric="val_accuracy", patience=1, min_delta=0.1))
    assert es.mode == "max" and es.min_delta == 0.1
    es = EarlyStopping.from_spec(EarlyStoppingSpec(metric="val_loss", min_delta=0.1))
    assert es.mode == "min" and es.min_delta == -0.1


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="sideways")
