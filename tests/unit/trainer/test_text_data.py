"""data.format text: a tokenizer trained on the training split only, ids padded with 0, the same
ids again from `text_inputs`, and generated reviews whose label needs word order."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kiln_api.spec import DataSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.data.generated import BAD, GOOD, sentences
from kiln_trainer.data.split import split_indices
from kiln_trainer.data.text import text_inputs

ROWS = 60


def unique_words_frame() -> pd.DataFrame:
    """Each row has a made-up word of its own, and a shared word."""
    return pd.DataFrame({"review": [f"shared qz{i:03d}xv" for i in range(ROWS)], "label": [i % 2 for i in range(ROWS)]})


def text_spec(source: str, tokenizer: str = "bpe", **changes: object) -> DataSpec:
    base: dict = {"source": source, "format": "text", "target": "label", "split": {"seed": 3},
                  "text": {"column": "review", "tokenizer": tokenizer, "vocabSize": 4000, "maxLength": 6}}
    base.update(changes)
    return DataSpec.model_validate(base)


def write(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "reviews.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece"])
def test_tokenizer_learns_words_of_the_training_split_only(tmp_path, tokenizer):
    frame = unique_words_frame()
    bundle = load_data(text_spec(write(tmp_path, frame), tokenizer), for_architecture="transformer")
    vocab = json.loads(bundle.inference["tokenizer_json"])["model"]["vocab"]
    train, val, test = split_indices(ROWS, 0.15, 0.15, 3, frame["label"].to_numpy())
    words = [f"qz{i:03d}xv" for i in range(ROWS)]
    assert all(words[i] in vocab for i in train)
    held_out = [words[i] for i in np.concatenate([val, test])]
    assert held_out and not any(w in vocab for w in held_out)


def test_ids_are_int64_padded_with_zero_and_truncated_to_max_length(tmp_path):
    frame = pd.DataFrame({"review": ["a b", "a b c d e f g h i", "", "b"] * 10, "label": ["x", "y", "x", "y"] * 10})
    bundle = load_data(text_spec(write(tmp_path, frame)), for_architecture="lstm")
    ids = text_inputs(bundle.inference, frame)
    assert ids.dtype.is_floating_point is False and str(ids.dtype) == "torch.int64" and ids.shape == (40, 6)
    assert (ids[0, 2:] == 0).all() and (ids[0, :2] > 0).all()
    assert (ids[1] > 0).all()  # nine words, cut to six
    assert (ids[2] == 0).all()
    assert bundle.inference["pad_id"] == 0 and bundle.inference["max_length"] == 6 and bundle.input_shape == (6,)


def test_text_inputs_reproduce_the_training_ids(tmp_path):
    frame = unique_words_frame()
    bundle = load_data(text_spec(write(tmp_path, frame)), for_architecture="gru")
    train_idx = split_indices(ROWS, 0.15, 0.15, 3, frame["label"].to_numpy())[0]
    again = text_inputs(bundle.inference, frame.iloc[train_idx])
    assert again.equal(bundle.train.x)


def test_text_inputs_name_a_missing_column(tmp_path):
    bundle = load_data(text_spec(write(tmp_path, unique_words_frame())), for_architecture="gru")
    with pytest.raises(DataError, match="'review'"):
        text_inputs(bundle.inference, pd.DataFrame({"text": ["hello"]}))


@pytest.mark.parametrize(("changes", "field"), [
    ({"text": {"column": "body"}}, "spec.data.text.column"),
    ({"target": "stars"}, "spec.data.target"),
    ({"augmentation": {"gaussianNoise": 0.1}}, "spec.data.augmentation.gaussianNoise"),
])
def test_bad_text_settings_name_the_field(tmp_path, changes, field):
    with pytest.raises(DataError) as caught:
        load_data(text_spec(write(tmp_path, unique_words_frame()), **changes), for_architecture="gru")
    assert caught.value.field == field


def test_text_needs_a_sequence_model():
    with pytest.raises(DataError) as caught:
        load_data(DataSpec(source="synthetic:text"), for_architecture="mlp")
    assert caught.value.field == "spec.model.architecture"


def test_generated_reviews_need_word_order_not_just_a_bag_of_words():
    """The best a bag of words can do: only polarity words, "not" and "but" depend on the label
    (nouns, adverbs and openers are drawn independently of it), so take the majority label of
    each bag of those; it must stay far from perfect."""
    frame = sentences(DataSpec(source="synthetic:text").synthetic.model_copy(update={"samples": 2000, "noise": 0.0}), seed=0)
    sign = {**dict.fromkeys(GOOD, "+"), **dict.fromkeys(BAD, "-"), "not": "not", "but": "but"}
    counts: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for text, label in zip(frame["text"], frame["label"], strict=True):
        counts[tuple(sorted(sign[w] for w in text.split() if w in sign))][label] += 1
    best_bag_accuracy = sum(max(c.values()) for c in counts.values()) / len(frame)
    assert best_bag_accuracy < 0.85, best_bag_accuracy
    assert set(frame["label"]) == {"negative", "positive"} and 0.35 < (frame["label"] == "positive").mean() < 0.65


def test_generated_reviews_are_deterministic_per_seed():
    syn = DataSpec(source="synthetic:text").synthetic
    assert sentences(syn, 4).equals(sentences(syn, 4)) and not sentences(syn, 4).equals(sentences(syn, 5))
