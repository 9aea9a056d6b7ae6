"""Streamed data's split (a seeded hash of identities) and one-pass statistics, without Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kiln_api.spec import DataSpec, Impute, Normalize, PreprocessingSpec
from kiln_trainer.data.errors import DataError
from kiln_trainer.data.hash_split import (
    TEST,
    TRAIN,
    VALIDATION,
    row_positions,
    rows_in_split,
    split_class_files,
    split_of_positions,
)
from kiln_trainer.data.preprocessing import fit_preprocessor
from kiln_trainer.data.stream_plan import MEMORY, STREAM, StreamPlan, choose_loading
from kiln_trainer.data.stream_stats import (
    Moments,
    TablePartial,
    block_partial,
    column_moments,
    encode_block,
    fit_streamed,
    image_partial,
    table_schema,
)
from kiln_trainer.data.tables import encode_features


def table(rows: int = 500, seed: int = 0, missing: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "a": rng.normal(3.0, 2.0, rows), "b": rng.integers(0, 100, rows).astype(float),
        "colour": rng.choice(["red", "green", "blue"], rows), "target": rng.choice(["no", "yes"], rows),
    })
    if missing:
        frame.loc[rng.choice(rows, missing, replace=False), "a"] = np.nan
    return frame


def test_a_rows_split_depends_only_on_the_seed_and_its_values_not_on_order_or_blocks() -> None:
    frame = table()
    whole = rows_in_split(frame, TRAIN, seed=3, validation=0.2, test=0.1)
    shuffled = frame.sample(frac=1.0, random_state=1)
    again = rows_in_split(shuffled, TRAIN, seed=3, validation=0.2, test=0.1)
    assert set(frame.index[whole]) == set(shuffled.index[again])
    blocks = np.concatenate([rows_in_split(frame.iloc[i : i + 37], TRAIN, seed=3, validation=0.2, test=0.1)
                             for i in range(0, len(frame), 37)])
    np.testing.assert_array_equal(blocks, whole)
    assert not np.array_equal(whole, rows_in_split(frame, TRAIN, seed=4, validation=0.2, test=0.1))


def test_hash_split_fractions_are_close_to_the_spec_and_the_splits_partition_the_rows() -> None:
    codes = split_of_positions(row_positions(table(rows=5000), seed=0), 0.2, 0.1)
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert shares == pytest.approx([0.7, 0.2, 0.1], abs=0.03)


def test_image_files_are_stratified_per_class_and_stable_under_a_new_root() -> None:
    classes = [("cat", [f"/a/cat/{i}.png" for i in range(50)]), ("dog", [f"/a/dog/{i}.png" for i in range(10)])]
    split = split_class_files(classes, seed=0, validation=0.2, test=0.1, root="/a")
    by_class = {s: np.bincount([label for _, label in split[s]], minlength=2).tolist() for s in (TRAIN, VALIDATION, TEST)}
    assert by_class == {TRAIN: [35, 7], VALIDATION: [10, 2], TEST: [5, 1]}
    moved = [(name, [p.replace("/a/", "/mnt/data/") for p in paths]) for name, paths in classes]
    elsewhere = split_class_files(moved, seed=0, validation=0.2, test=0.1, root="/mnt/data")
    assert [p.replace("/mnt/data/", "/a/") for p, _ in elsewhere[TEST]] == [p for p, _ in split[TEST]]


@pytest.mark.parametrize("normalize", [Normalize.standard, Normalize.minmax, Normalize.none])
@pytest.mark.parametrize("impute", [Impute.mean, Impute.drop])
def test_statistics_merged_from_blocks_equal_the_in_memory_fit(normalize: Normalize, impute: Impute) -> None:
    frame = table(rows=400, missing=30)
    spec = PreprocessingSpec(normalize=normalize, impute=impute)
    codes = split_of_positions(row_positions(frame, seed=0), 0.2, 0.1)
    partial = TablePartial()
    for start in range(0, len(frame), 64):
        partial = partial.merge(block_partial(frame.iloc[start : start + 64], codes[start : start + 64], target="target", impute=impute))
    schema = table_schema(partial, task=None, source="t.csv", target="target")
    streamed = fit_streamed(column_moments(partial, schema), partial.rows[TRAIN], spec)
    train = frame[codes == 0]
    features = encode_features(train.drop(columns=["target"]), "t.csv")
    x = features[schema.feature_names].to_numpy(np.float32)
    if impute == Impute.drop:
        x = x[~np.isnan(x).any(axis=1)]
    reference = fit_preprocessor(x, spec)
    for name in ("fill", "center", "scale"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(reference, name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert schema.class_values == ["no", "yes"] and schema.task == "classification"


def test_encoded_blocks_use_the_fitted_categories_and_mark_missing_values() -> None:
    frame = table(rows=50, missing=5)
    partial = block_partial(frame, np.zeros(len(frame), dtype=np.int8), target="target", impute=Impute.mean)
    schema = table_schema(partial, task=None, source="t.csv", target="target")
    x, y = encode_block(frame, schema, target="target")
    assert schema.feature_names == ["a", "b", "colour=blue", "colour=green", "colour=red"]
    assert x.dtype == np.float32 and x.shape == (50, 5) and int(np.isnan(x[:, 0]).sum()) == 5
    np.testing.assert_array_equal(x[:, 2:].sum(axis=1), np.ones(50))
    np.testing.assert_array_equal(y, (frame["target"] == "yes").to_numpy().astype(np.int64))


def test_moments_merge_like_one_pass_over_all_values() -> None:
    values = np.random.default_rng(0).normal(10.0, 3.0, 1001)
    merged = Moments.of(values[:10]).merge(Moments.of(values[10:500])).merge(Moments()).merge(Moments.of(values[500:]))
    whole = Moments.of(values)
    assert merged.count == whole.count
    assert merged.mean == pytest.approx(whole.mean) and merged.m2 == pytest.approx(whole.m2)
    assert (merged.low, merged.high) == (whole.low, whole.high)


def test_image_channel_moments_are_per_channel_in_unit_scale() -> None:
    images = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    images[..., 1] = 255
    images[:2, ..., 2] = 255
    channels = image_partial(images).channels
    assert [c.mean for c in channels] == pytest.approx([0.0, 1.0, 0.5])
    assert channels[2].m2 / channels[2].count == pytest.approx(0.25)


def test_median_imputation_cannot_be_fitted_by_streaming() -> None:
    with pytest.raises(DataError, match="spec.data.preprocessing.impute"):
        fit_streamed([Moments.of(np.ones(3))], 3, PreprocessingSpec(impute=Impute.median))


@pytest.mark.parametrize(("changes", "size", "expected"), [
    ({"source": "builtin:digits"}, None, MEMORY),
    ({"source": "synthetic:classification"}, None, MEMORY),
    ({"source": "big.parquet"}, 300 << 20, STREAM),
    ({"source": "small.csv"}, 1 << 20, MEMORY),
    ({"source": "small.csv", "loading": "stream"}, 1 << 20, STREAM),
    ({"source": "big.parquet", "loading": "memory"}, 300 << 20, MEMORY),
    ({"source": "big.parquet", "stream": {"thresholdMiB": 0}}, 1, STREAM),
    ({"source": "unknown.csv"}, None, MEMORY),
])
def test_loading_is_chosen_from_the_source_kind_its_size_and_the_spec(changes: dict, size: int | None, expected: str) -> None:
    assert choose_loading(DataSpec.model_validate(changes), size) == expected


def test_a_plan_round_trips_through_json_and_refuses_what_is_not_an_object() -> None:
    plan = StreamPlan(kind="table", source="t.csv", task="classification", class_names=["a", "b"], feature_names=["x"],
                      input_shape=[1], output_dim=2, rows={"train": 3}, fill=[0.0], center=[1.0], scale=[2.0])
    assert StreamPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError):
        StreamPlan.from_json("[1, 2]")


def test_decoded_images_are_cached_when_the_training_split_fits_the_store_budget() -> None:
    from kiln_trainer.data.stream_pipelines import cached_splits, files_per_block, image_bytes

    rgb = image_bytes(128, "RGB")
    assert rgb == 128 * 128 * 3 and image_bytes(32, "L") == 32 * 32
    rows = {"train": 4500, "validation": 250, "test": 250}
    assert cached_splits(rows, rgb, budget=4750 * rgb) == {"train", "validation"}
    assert cached_splits(rows, rgb, budget=4600 * rgb) == {"train"}
    # A training split that streams leaves the store to the blocks in flight: nothing is cached.
    assert cached_splits(rows, rgb, budget=4499 * rgb) == set()
    assert cached_splits(rows, rgb, budget=0) == set()
    assert 8 <= files_per_block(rgb) <= 256 and files_per_block(1) == 256 and files_per_block(1 << 30) == 8
