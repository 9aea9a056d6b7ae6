"""The recipe a streamed run saves turns raw rows into exactly the inputs its one-pass statistics gave."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from kiln_api.spec import DataSpec
from kiln_trainer.data.inference import streamed_inference, table_columns, table_inputs
from kiln_trainer.data.stream_plan import StreamPlan
from kiln_trainer.data.stream_stats import block_partial, column_moments, encode_block, fit_streamed, table_schema
from kiln_trainer.stream_feed import StreamInputs, stream_bundle


def frame(rows: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    out = pd.DataFrame({"z": rng.normal(3, 2, rows), "colour": rng.choice(["red", "blue", "green"], rows),
                        "a": rng.normal(size=rows), "label": rng.choice(["x", "y"], rows)})
    out.loc[[1, 7], "z"] = np.nan
    out.loc[4, "colour"] = None
    return out


@pytest.mark.parametrize("normalize", ["standard", "minmax", "none"])
def test_a_streamed_tables_recipe_reproduces_its_encoded_and_scaled_rows(normalize):
    data = frame()
    spec = DataSpec.model_validate({"source": "t.csv", "target": "label", "preprocessing": {"normalize": normalize}})
    partial = block_partial(data, np.zeros(len(data), dtype=np.int64), target="label", impute=spec.preprocessing.impute)
    schema = table_schema(partial, task=None, source="t.csv", target="label")
    pre = fit_streamed(column_moments(partial, schema), len(data), spec.preprocessing)
    recipe = streamed_inference("table", table_schema=asdict(schema), feature_names=schema.feature_names,
                                input_shape=[len(schema.feature_names)], pre=pre, task=schema.task,
                                class_names=["x", "y"], spec=spec, target_mean=0.0, target_std=1.0)
    expected = pre.transform(encode_block(data, schema, target="label")[0])
    shuffled = data[["label", "a", "colour", "z"]]  # the streamed order (sorted numbers, then categories) differs
    np.testing.assert_array_equal(table_inputs(recipe, shuffled).numpy(), expected)


def test_columns_follow_the_feature_order_with_each_categorys_indicators_together():
    names = ["b", "c=1", "c=2", "a=b", "x"]
    # `a=b` is a number column whose name merely holds "="; only declared categories are split.
    assert table_columns(names, {"c": ["1", "2"]}) == [
        {"name": "b", "kind": "number"}, {"name": "c", "kind": "category", "values": ["1", "2"]},
        {"name": "a=b", "kind": "number"}, {"name": "x", "kind": "number"},
    ]


def test_a_category_value_unseen_in_training_sets_no_indicator_and_a_missing_one_is_imputed():
    recipe = {"format": "table", "impute": "mean", "columns": [{"name": "c", "kind": "category", "values": ["p", "q"]}],
              "feature_names": ["c=p", "c=q"], "fill": [0.25, 0.75], "center": [0.0, 0.0], "scale": [1.0, 1.0]}
    got = table_inputs(recipe, pd.DataFrame({"c": ["q", "new", None]})).numpy()
    np.testing.assert_array_equal(got, [[0.0, 1.0], [0.0, 0.0], [0.25, 0.75]])


def test_a_streamed_runs_bundle_carries_the_recipe_of_its_plan():
    data = frame()
    spec = DataSpec.model_validate({"source": "t.csv", "target": "label"})
    partial = block_partial(data, np.zeros(len(data), dtype=np.int64), target="label", impute=spec.preprocessing.impute)
    schema = table_schema(partial, task=None, source="t.csv", target="label")
    pre = fit_streamed(column_moments(partial, schema), len(data), spec.preprocessing)
    plan = StreamPlan(kind="table", source="t.csv", task=schema.task, class_names=["x", "y"],
                      feature_names=schema.feature_names, input_shape=[len(schema.feature_names)], output_dim=2,
                      rows={"train": len(data)}, fill=pre.fill.tolist(), center=pre.center.tolist(),
                      scale=pre.scale.tolist(), table_schema=asdict(schema))
    # The workers' shards are never read here: the bundle only wraps them.
    bundle = stream_bundle(plan, StreamInputs(plan, shard=lambda name: object()), spec, torch.device("cpu"))
    assert bundle.inference["format"] == "table" and bundle.inference["class_names"] == ["x", "y"]
    np.testing.assert_array_equal(table_inputs(bundle.inference, data).numpy(),
                                  pre.transform(encode_block(data, schema, target="label")[0]))
