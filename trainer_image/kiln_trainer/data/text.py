"""data.format text: a text column with labels, tokenised by a tokenizer trained on the training split.

Texts become int64 token ids, truncated or padded with PAD_ID (0) to `maxLength`; models derive
their padding mask from the ids (sequence_models.py). The tokenizer (Hugging Face `tokenizers`,
BPE or WordPiece) sees the training split only, so validation and test words it never saw become
sub-words or [UNK], as they would for new text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from kiln_api.spec import DataSpec, TextSpec, Tokenizer
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from .errors import DataError
from .generated import sentences
from .loaders import DataBundle
from .raw import CLASSIFICATION, REGRESSION
from .split import split_indices
from .split_bundle import bundle_from_splits, check_splits
from .tables import encode_labels, infer_task

TEXT = "text"
PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID = 0  # the first special token: sequence_models.PAD_ID
# Characters of one text that are tokenised at all: bounds the work a hostile row can cause.
MAX_TEXT_CHARS = 100_000


def train_tokenizer(texts: list[str], spec: TextSpec) -> HfTokenizer:
    """A BPE or WordPiece tokenizer learned from `texts`, with [PAD] = 0 and [UNK] = 1."""
    if spec.tokenizer == Tokenizer.wordpiece:
        tokenizer = HfTokenizer(models.WordPiece(unk_token=UNK_TOKEN))
        trainer: Any = trainers.WordPieceTrainer(vocab_size=spec.vocab_size, special_tokens=[PAD_TOKEN, UNK_TOKEN],
                                                 show_progress=False)
        tokenizer.decoder = decoders.WordPiece()
    else:
        tokenizer = HfTokenizer(models.BPE(unk_token=UNK_TOKEN))
        trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=[PAD_TOKEN, UNK_TOKEN],
                                      show_progress=False)
    steps = [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()] if spec.lowercase else [normalizers.NFC()]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID:
        raise AssertionError("the tokenizer's [PAD] id is not 0")
    return tokenizer


def encode(tokenizer: HfTokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """(texts, max_length) int64 ids: truncated, then padded with PAD_ID."""
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        tokens = encoding.ids[:max_length]
        ids[row, : len(tokens)] = tokens
    return ids


def clean_texts(column: pd.Series) -> list[str]:
    """Text cells as str (missing: empty), each cut to MAX_TEXT_CHARS."""
    return [str(v)[:MAX_TEXT_CHARS] if isinstance(v, str) or pd.notna(v) else "" for v in column.tolist()]


def frame_bundle(spec: DataSpec, frame: pd.DataFrame, source: str) -> DataBundle:
    """Token ids of `text.column`, labels from `target`; the tokenizer is trained on the training rows."""
    text, target = spec.text or TextSpec(), spec.target
    for name, field in ((text.column, "spec.data.text.column"), (target, "spec.data.target")):
        if name not in frame.columns:
            shown = ", ".join(map(str, list(frame.columns)[:20]))
            raise DataError(field, f"column {name!r} not found in {source} (columns: {shown})")
    if spec.augmentation.gaussian_noise:
        raise DataError("spec.data.augmentation.gaussianNoise", "text is token ids; noise cannot be added to them")
    frame = frame[frame[target].notna()]
    if frame.empty:
        raise DataError("spec.data.target", f"column {target!r} of {source} has no values")
    labels = frame[target]
    task = infer_task(labels) if spec.task.value == "auto" else spec.task.value
    if task == CLASSIFICATION:
        y, class_names = encode_labels(labels)
    else:
        if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
            raise DataError("spec.data.task", f"regression needs a numeric target, but column {target!r} holds {labels.dtype} values")
        y, class_names = labels.to_numpy(np.float64), []
    texts = clean_texts(frame[text.column])
    split = spec.split
    parts = split_indices(len(y), split.validation, split.test, split.seed, y if task == CLASSIFICATION else None)
    tokenizer = train_tokenizer([texts[i] for i in parts[0]], text)
    ids = encode(tokenizer, texts, text.max_length)
    splits = tuple((ids[idx], y[idx]) for idx in parts)
    check_splits(splits, (split.train, split.validation, split.test), "text")
    return bundle_from_splits(splits, task=task if task == CLASSIFICATION else REGRESSION, class_names=class_names,
                              source=source, inference=text_inference(text, tokenizer))


def text_inference(text: TextSpec, tokenizer: HfTokenizer) -> dict[str, Any]:
    """What `text_inputs` needs: the column and the trained tokenizer itself (JSON)."""
    return {"format": TEXT, "column": text.column, "tokenizer_json": tokenizer.to_str(), "max_length": text.max_length,
            "pad_id": PAD_ID, "vocab_size": tokenizer.get_vocab_size()}


def synthetic_bundle(spec: DataSpec) -> DataBundle:
    """synthetic:text: generated reviews in column `text`, labels in `label`."""
    text = spec.text or TextSpec(max_length=32)
    changed = spec.model_copy(update={"text": text.model_copy(update={"column": "text"}), "target": "label"})
    return frame_bundle(changed, sentences(spec.synthetic, spec.split.seed), spec.source)


def text_inputs(inference: dict[str, Any], frame: pd.DataFrame) -> torch.Tensor:
    """int64 (rows, max_length) token ids of the frame's text column, padded with pad_id."""
    column = inference["column"]
    if column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:20]))
        raise DataError("columns", f"missing column {column!r}, the text the model reads (columns: {shown})")
    tokenizer = HfTokenizer.from_str(inference["tokenizer_json"])
    return torch.from_numpy(encode(tokenizer, clean_texts(frame[column]), int(inference["max_length"])))
