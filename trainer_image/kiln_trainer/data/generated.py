"""Generated sequence and text data (synthetic:sequence, synthetic:text): no download, a
deterministic function of `spec.data.synthetic` and `spec.split.seed`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from kiln_api.spec import SyntheticSpec

from .errors import DataError

WAVEFORMS = ("sine", "square", "sawtooth", "triangle")
# Generated arrays are capped so that a typo in samples cannot exhaust a worker's memory.
MAX_GENERATED_VALUES = 50_000_000


def _check_size(values: int) -> None:
    if values > MAX_GENERATED_VALUES:
        raise DataError("spec.data.synthetic.samples", f"would generate {values} values; at most {MAX_GENERATED_VALUES}")


def _wave(kind: str, cycles: np.ndarray) -> np.ndarray:
    """One period per unit of `cycles`, amplitude 1."""
    frac = cycles - np.floor(cycles)
    if kind == "sine":
        return np.sin(2 * np.pi * cycles)
    if kind == "square":
        return np.where(frac < 0.5, 1.0, -1.0)
    if kind == "sawtooth":
        return 2 * frac - 1
    return 4 * np.abs(frac - 0.5) - 1  # triangle


def waveforms(syn: SyntheticSpec, length: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`samples` windows (samples, length, features) of noisy waveforms and their class (the waveform).

    Each window has a random frequency (1.5 to 4 cycles), phase and amplitude per feature, plus
    Gaussian noise of std `noise`, so the class is in the shape, not in any one value."""
    if syn.classes > len(WAVEFORMS):
        raise DataError("spec.data.synthetic.classes", f"synthetic:sequence has {len(WAVEFORMS)} waveform classes "
                        f"({', '.join(WAVEFORMS)}); got {syn.classes}")
    _check_size(syn.samples * length * syn.features)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, syn.classes, size=syn.samples)
    shape = (syn.samples, 1, syn.features)
    freq = rng.uniform(1.5, 4.0, size=shape) / length
    phase = rng.uniform(0.0, 1.0, size=shape)
    amplitude = rng.uniform(0.5, 1.5, size=shape)
    cycles = np.arange(length).reshape(1, -1, 1) * freq + phase
    x = np.empty((syn.samples, length, syn.features))
    for cls, kind in enumerate(WAVEFORMS[: syn.classes]):
        members = labels == cls
        x[members] = _wave(kind, cycles[members])
    x = x * amplitude + rng.normal(0.0, syn.noise, size=x.shape)
    return x.astype(np.float32), labels.astype(np.int64), list(WAVEFORMS[: syn.classes])


def series_frame(syn: SyntheticSpec, seed: int) -> pd.DataFrame:
    """One series of `samples` steps for forecasting: `value` = two sines (periods 20-40 and 7-13
    steps) plus noise; with features > 1, phase-shifted copies of the slow sine as covariates."""
    _check_size(syn.samples * syn.features)
    rng = np.random.default_rng(seed)
    t = np.arange(syn.samples, dtype=np.float64)
    slow, fast = rng.uniform(20, 40), rng.uniform(7, 13)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    columns = {"value": np.sin(2 * np.pi * t / slow + phase[0]) + 0.5 * np.sin(2 * np.pi * t / fast + phase[1])
               + rng.normal(0.0, syn.noise, size=len(t))}
    for k in range(1, syn.features):
        columns[f"x{k}"] = np.sin(2 * np.pi * t / slow + phase[0] + k * np.pi / 4) + rng.normal(0.0, syn.noise, len(t))
    return pd.DataFrame(columns).astype(np.float32)


NOUNS = ("food", "service", "staff", "room", "music", "view", "price", "coffee", "bed", "menu")
GOOD = ("good", "great", "excellent", "lovely", "tasty", "friendly")
BAD = ("bad", "awful", "terrible", "rude", "bland", "dirty")
ADVERBS = ("", "really ", "very ", "quite ", "truly ")
OPENERS = ("", "honestly ", "overall ", "i think ", "to be fair ")
TEXT_CLASSES = ["negative", "positive"]


def _clause(rng: np.random.Generator) -> tuple[str, int]:
    """'the food was not really tasty' and its polarity (1 positive, 0 negative)."""
    positive = bool(rng.integers(2))
    negated = rng.random() < 0.3
    adjective = (GOOD if positive else BAD)[rng.integers(6)]
    words = f"the {NOUNS[rng.integers(len(NOUNS))]} was {'not ' if negated else ''}{ADVERBS[rng.integers(5)]}{adjective}"
    return words, int(positive != negated)


def sentences(syn: SyntheticSpec, seed: int) -> pd.DataFrame:
    """Reviews labelled negative/positive by their polarity; what decides it needs word order.

    Half the reviews have two clauses joined by "but", and then the second clause decides: the
    same words in the other order ("bad but good" / "good but bad") carry the other label. A "not"
    flips the clause it stands in. Labels are flipped with probability `noise` (as for
    synthetic:classification)."""
    if syn.classes != 2:
        raise DataError("spec.data.synthetic.classes", f"synthetic:text has 2 classes (negative, positive); got {syn.classes}")
    if syn.noise > 1.0:
        raise DataError("spec.data.synthetic.noise", f"for synthetic:text noise is the flipped label fraction (0..1), got {syn.noise}")
    _check_size(syn.samples * 32)
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(syn.samples):
        first, label = _clause(rng)
        text = OPENERS[rng.integers(len(OPENERS))] + first
        if rng.random() < 0.5:
            second, label = _clause(rng)
            text = f"{text} but {second}"
        texts.append(text)
        labels.append(label)
    y = np.asarray(labels)
    flip = rng.random(len(y)) < syn.noise
    y = np.where(flip, 1 - y, y)
    return pd.DataFrame({"text": texts, "label": [TEXT_CLASSES[v] for v in y]})
