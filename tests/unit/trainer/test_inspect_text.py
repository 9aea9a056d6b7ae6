"""`kiln inspect` on a text column: length distributions and vocabulary coverage of the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kiln_api import TrainingJob
from kiln_api.spec import DataFormat, DataSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.inspect_run import inspect_job
from kiln_trainer.inspect_text import build_vocabulary, coverage, tokenize


def job(model: dict[str, Any] | None = None, **data: Any) -> TrainingJob:
    spec = {"data": data, **({"model": model} if model else {})}
    return TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                       "metadata": {"name": "inspect"}, "spec": spec})


def reviews(path: Path, rows: int = 120) -> pd.DataFrame:
    """Every review is `common word w<i>`: two shared words and one seen nowhere else."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"review": [f"Common word w{i}" for i in range(rows)], "stars": rng.integers(1, 4, rows),
                          "label": rng.choice(["neg", "pos"], rows)})
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.parametrize(("vocab_size", "covered"), [(10_000, 2 / 3), (1, 1 / 3)])
def test_coverage_counts_test_tokens_inside_the_training_vocabulary(tmp_path: Path, vocab_size: int, covered: float) -> None:
    # Unique words are never in the training vocabulary; with one slot only `common` (first of the tie) is.
    reviews(tmp_path / "r.csv")
    report = inspect_job(job(source=str(tmp_path / "r.csv"), target="label"), text_column="review", vocab_size=vocab_size)
    vocab = report["text"]["vocabulary"]
    assert vocab["evaluated_on"] == "test" and vocab["coverage"] == pytest.approx(covered)
    assert vocab["tokens"] == 3 * report["splits"]["test"]


def test_length_distribution_counts_words_and_characters(tmp_path: Path) -> None:
    frame = reviews(tmp_path / "r.csv")
    frame.loc[:9, "review"] = "a much longer review than any other one here"
    frame.to_csv(tmp_path / "r.csv", index=False)
    text = inspect_job(job(source=str(tmp_path / "r.csv"), target="label"), text_column="review")["text"]
    words = frame["review"].map(lambda t: len(tokenize(t)))
    assert text["words"]["quantiles"]["1"] == words.max() and text["words"]["mean"] == pytest.approx(words.mean())
    assert text["characters"]["quantiles"]["0"] == frame["review"].str.len().min()
    assert text["rows"] == len(frame)


def test_low_coverage_is_a_warning_naming_the_text_column(tmp_path: Path) -> None:
    reviews(tmp_path / "r.csv")
    report = inspect_job(job(source=str(tmp_path / "r.csv"), target="label"), text_column="review", vocab_size=1)
    assert [(w["kind"], w["column"]) for w in report["warnings"]] == [("vocabulary", "review")]


def test_the_text_column_is_not_mistaken_for_a_leaking_category(tmp_path: Path) -> None:
    reviews(tmp_path / "r.csv")
    report = inspect_job(job(source=str(tmp_path / "r.csv"), target="label"), text_column="review")
    assert all(c["column"] != "review" for c in report["correlations"])


def test_an_unknown_text_column_is_an_error_naming_it(tmp_path: Path) -> None:
    reviews(tmp_path / "r.csv")
    with pytest.raises(DataError, match="'body' not found"):
        inspect_job(job(source=str(tmp_path / "r.csv"), target="label"), text_column="body")


def test_vocabulary_keeps_the_most_frequent_tokens_and_ties_by_token() -> None:
    vocabulary = build_vocabulary(["b a a", "c b"], 2)
    assert vocabulary == {"a", "b"}
    assert coverage(["a c", "d"], vocabulary) == (pytest.approx(1 / 3), 3)


@pytest.mark.skipif("text" not in DataFormat.__members__, reason="data.format text is not in the spec")
def test_a_format_text_job_is_analysed_with_its_text_section(tmp_path: Path) -> None:
    reviews(tmp_path / "r.csv")
    data = {"source": str(tmp_path / "r.csv"), "format": "text", "target": "label",
            "text": {"column": "review", "vocabSize": 16}}
    report = inspect_job(job(model={"architecture": "lstm"}, **data))
    assert report["text"]["column"] == "review" and report["text"]["vocabulary"]["size"] == 16


@pytest.mark.skipif("text" not in DataFormat.__members__, reason="data.format text is not in the spec")
def test_format_text_split_sizes_equal_the_text_trainers(tmp_path: Path) -> None:
    frame = reviews(tmp_path / "r.csv", rows=73)
    frame.loc[[1, 4], "label"] = np.nan  # dropped by the trainer
    frame.loc[[7, 9], "stars"] = np.nan  # kept: the text loader reads only the text and the label
    frame.to_csv(tmp_path / "r.csv", index=False)
    data = {"source": str(tmp_path / "r.csv"), "format": "text", "target": "label", "text": {"column": "review"},
            "preprocessing": {"impute": "drop"}, "split": {"train": 0.6, "validation": 0.25, "test": 0.15}}
    splits = inspect_job(job(model={"architecture": "lstm"}, **data))["splits"]
    bundle = load_data(DataSpec.model_validate(data), for_architecture="lstm")
    assert (splits["train"], splits["validation"], splits["test"]) == (len(bundle.train), len(bundle.validation), len(bundle.test))


@pytest.mark.skipif("text" not in DataFormat.__members__, reason="data.format text is not in the spec")
def test_a_missing_text_column_of_the_spec_is_named_by_its_field(tmp_path: Path) -> None:
    reviews(tmp_path / "r.csv")
    data = {"source": str(tmp_path / "r.csv"), "format": "text", "target": "label", "text": {"column": "body"}}
    with pytest.raises(DataError, match=r"spec\.data\.text\.column: column 'body' not found"):
        inspect_job(job(model={"architecture": "lstm"}, **data))
