"""Exploratory analysis of a text column (`kiln inspect`): lengths and vocabulary coverage.

Coverage is the share of the test split's words (the validation split's when there is no test
split) that a vocabulary of the `vocab_size` most frequent training words holds. It is counted in
whole words on purpose: the job's subword tokenizer (bpe, wordpiece) covers nearly any text with
pieces, and the share of words it keeps whole is what says whether vocabSize is large enough.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np
import pandas as pd

from .inspect_data import numeric_summary

TOKEN = re.compile(r"\w+")
TOKENIZER = "words (\\w+)"
DEFAULT_VOCAB_SIZE = 10_000


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    return TOKEN.findall(text.lower() if lowercase else text)


def build_vocabulary(texts: Iterable[str], size: int, lowercase: bool = True) -> set[str]:
    """The `size` most frequent tokens (ties by token, so the same texts give the same vocabulary)."""
    counts = Counter(token for text in texts for token in tokenize(text, lowercase))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {token for token, _ in ranked[:size]}


def coverage(texts: Iterable[str], vocabulary: set[str], lowercase: bool = True) -> tuple[Optional[float], int]:
    """(share of tokens in `vocabulary`, tokens) over `texts`; the share is None without tokens."""
    tokens = [token for text in texts for token in tokenize(text, lowercase)]
    if not tokens:
        return None, 0
    return sum(token in vocabulary for token in tokens) / len(tokens), len(tokens)


def text_report(texts: pd.Series, codes: np.ndarray, *, column: str, vocab_size: int, split_note: str,
                lowercase: bool = True) -> dict[str, Any]:
    """Length distributions and coverage of a text column; `codes` is each row's split (0 train,
    1 validation, 2 test)."""
    values = texts.fillna("").astype(str).tolist()
    words = np.array([len(tokenize(v, lowercase)) for v in values], dtype=np.float64)
    chars = np.array([len(v) for v in values], dtype=np.float64)
    train = [v for v, c in zip(values, codes, strict=True) if c == 0]
    held_code, held_name = (2, "test") if (codes == 2).any() else (1, "validation")
    held = [v for v, c in zip(values, codes, strict=True) if c == held_code]
    vocabulary = build_vocabulary(train, vocab_size, lowercase)
    share, tokens = coverage(held, vocabulary, lowercase)
    train_tokens = Counter(token for text in train for token in tokenize(text, lowercase))
    return {
        "column": column, "tokenizer": ("lower-cased " if lowercase else "") + TOKENIZER, "rows": len(values), "empty": int((words == 0).sum()),
        "words": numeric_summary(words), "characters": numeric_summary(chars),
        "vocabulary": {"size": vocab_size, "built": len(vocabulary), "distinct_train_tokens": len(train_tokens),
                       "evaluated_on": held_name, "tokens": tokens, "coverage": share, "split": split_note},
    }


def coverage_warning(report: dict[str, Any]) -> Optional[dict[str, str]]:
    """Low coverage (under 90 %) means many unknown tokens at test time: a larger vocabSize may help."""
    vocab = report["vocabulary"]
    if vocab["coverage"] is None or vocab["coverage"] >= 0.9:
        return None
    return {"kind": "vocabulary", "column": report["column"],
            "message": f"a vocabulary of {vocab['size']} training tokens covers only {vocab['coverage']:.1%} of the "
                       f"{vocab['evaluated_on']} split's tokens in column {report['column']!r}"}
