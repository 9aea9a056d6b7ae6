"""spec.evaluation: its defaults, and where slices cannot work, refused with the field named."""

from __future__ import annotations

import re

import pytest
from kiln_api import TrainingJob
from kiln_api.spec import EvaluationSpec
from pydantic import ValidationError


def _job(spec: dict) -> TrainingJob:
    return TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "e"},
                                       "spec": spec})


def test_defaults_are_no_slices_and_a_tolerance_of_five_points():
    evaluation = _job({}).spec.evaluation
    assert evaluation == EvaluationSpec() and evaluation.slice_by == [] and evaluation.slice_tolerance == 0.05
    assert evaluation.exclude_from_features == []


def test_a_table_in_memory_can_be_sliced_with_a_column_kept_out_of_the_features():
    spec = _job({"data": {"source": "data/t.csv"},
                 "evaluation": {"sliceBy": ["region", "gender"], "sliceTolerance": 0.0, "excludeFromFeatures": ["gender"]}}).spec
    assert spec.evaluation.slice_by == ["region", "gender"] and spec.evaluation.exclude_from_features == ["gender"]


@pytest.mark.parametrize(("spec", "message"), [
    ({"data": {"source": "builtin:digits"}}, "builtin, synthetic and image-folder data have no columns"),
    ({"data": {"source": "synthetic:regression"}}, "builtin, synthetic and image-folder data have no columns"),
    ({"data": {"source": "pvc://d/images", "format": "imagefolder"}, "model": {"architecture": "cnn"}},
     "builtin, synthetic and image-folder data have no columns"),
    ({"data": {"source": "s3://b/t.parquet", "loading": "stream"}}, "with data.loading stream the report has no slices"),
    ({"data": {"source": "data/t.csv"}, "entrypoint": "pkg.mod:train"}, "custom code (entrypoint) evaluates itself"),
])
def test_slices_where_the_data_has_no_columns_in_memory_are_refused(spec, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        _job({**spec, "evaluation": {"sliceBy": ["region"]}})


@pytest.mark.parametrize(("evaluation", "message"), [
    ({"sliceBy": ["region"], "sliceTolerance": 1.01}, "less than or equal to 1"),
    ({"sliceBy": ["region"], "sliceTolerance": -0.01}, "greater than or equal to 0"),
    ({"sliceBy": ["region"], "excludeFromFeatures": ["gender"]}, "must also be listed in sliceBy"),
    ({"sliceBy": ["region", "region"]}, "must not list a column twice"),
    ({"sliceBy": [f"c{i}" for i in range(17)]}, "at most 16 items"),
    ({"sliceBy": [""]}, "at least 1 character"),
])
def test_evaluation_fields_out_of_bounds_are_refused(evaluation, message):
    with pytest.raises(ValidationError, match=message):
        _job({"data": {"source": "data/t.csv"}, "evaluation": evaluation})
