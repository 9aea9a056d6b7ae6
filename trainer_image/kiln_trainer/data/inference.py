"""How NEW raw data becomes model inputs: the recipe a DataBundle carries (`inference`, JSON only)
and applying it to a table or to images.

The recipe is written at training time from the statistics fitted on the training split (in
memory, or in one streamed pass) and saved in model.pt, so predicting never needs the training
data. Tables: each source column is a number (one feature) or a category (one 0/1 indicator per
value seen in training, in `feature_names` order); missing values are filled, then every feature
is scaled, exactly as preprocessing.Preprocessor does. Images: decoded, resized to a square,
scaled to [0, 1] and normalised per channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from kiln_api.spec import DataSpec
from pandas.api import types as ptypes
from PIL import Image

from .errors import DataError
from .images import to_array
from .preprocessing import Preprocessor
from .raw import IMAGE, TABLE, RawData

TABLE_FORMAT = "table"
IMAGE_FORMAT = "image"
NUMBER = "number"
CATEGORY = "category"


def describe_inputs(raw: RawData, pre: Preprocessor, spec: DataSpec, target_mean: float, target_std: float) -> dict[str, Any]:
    """The recipe for in-memory data ({} for a kind described elsewhere, e.g. sequences or text)."""
    if raw.kind == TABLE:
        return table_inference(feature_names=raw.feature_names, categories=raw.categories, pre=pre, task=raw.task,
                               class_names=raw.class_names, target=spec.target, impute=spec.preprocessing.impute.value,
                               target_mean=target_mean, target_std=target_std)
    if raw.kind == IMAGE:
        return image_inference(input_shape=tuple(raw.x.shape[1:]), pre=pre, class_names=raw.class_names)
    return {}


def table_inference(*, feature_names: list[str], categories: dict[str, list[str]], pre: Preprocessor, task: str,
                    class_names: list[str], target: str, impute: str, target_mean: float,
                    target_std: float) -> dict[str, Any]:
    return {
        "format": TABLE_FORMAT, "task": task, "target": target, "impute": impute,
        "columns": table_columns(feature_names, categories), "feature_names": list(feature_names),
        "fill": pre.fill.tolist(), "center": pre.center.tolist(), "scale": pre.scale.tolist(),
        "class_names": list(class_names), "target_mean": float(target_mean), "target_std": float(target_std),
    }


def table_columns(feature_names: list[str], categories: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Source columns in feature order: a category's indicators are contiguous, in its values' order."""
    indicator = {f"{name}={value}": name for name, values in categories.items() for value in values}
    columns: list[dict[str, Any]] = []
    seen: set[str] = set()
    for feature in feature_names:
        name = indicator.get(feature)
        if name is None:
            columns.append({"name": feature, "kind": NUMBER})
        elif name not in seen:
            seen.add(name)
            columns.append({"name": name, "kind": CATEGORY, "values": list(categories[name])})
    return columns


def image_inference(*, input_shape: tuple[int, ...], pre: Preprocessor, class_names: list[str]) -> dict[str, Any]:
    channels, height, _ = input_shape
    return {"format": IMAGE_FORMAT, "image_size": int(height), "channels": int(channels), "mean": pre.center.tolist(),
            "std": pre.scale.tolist(), "class_names": list(class_names)}


def streamed_inference(kind: str, *, table_schema: dict[str, Any], feature_names: list[str], input_shape: list[int],
                       pre: Preprocessor, task: str, class_names: list[str], spec: DataSpec, target_mean: float,
                       target_std: float) -> dict[str, Any]:
    """The recipe of a streamed run, from the statistics its one pass fitted (data/stream_stats.py)."""
    if kind == IMAGE:
        return image_inference(input_shape=tuple(input_shape), pre=pre, class_names=class_names)
    return table_inference(feature_names=feature_names, categories=table_schema.get("categories", {}), pre=pre,
                           task=task, class_names=class_names, target=spec.target,
                           impute=spec.preprocessing.impute.value, target_mean=target_mean, target_std=target_std)


# ---------------------------------------------------------------------- checking and applying it

MAX_IMAGE_SIZE = 4096


def check_recipe(inference: dict[str, Any], where: str) -> None:
    """A table or image recipe read from a file is consistent, or a DataError names what is not."""
    try:
        if inference.get("format") == TABLE_FORMAT:
            _check_table(inference)
        elif inference.get("format") == IMAGE_FORMAT:
            _check_image(inference)
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"lacks {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError("model", f"{where}: its input recipe (inference) is damaged: {reason}") from exc


def _check_table(inference: dict[str, Any]) -> None:
    columns, names = inference["columns"], inference["feature_names"]
    if not isinstance(columns, list) or not isinstance(names, list):
        raise TypeError("columns and feature_names must be lists")
    widths = 0
    for column in columns:
        if not isinstance(column, dict) or not isinstance(column.get("name"), str):
            raise TypeError("every column needs a name")
        values = column.get("values", [])
        if column.get("kind") not in (NUMBER, CATEGORY) or not isinstance(values, list):
            raise ValueError(f"column {column['name']!r} has no valid kind")
        widths += 1 if column["kind"] == NUMBER else len(values)
    for key in ("fill", "center", "scale"):
        stats = np.asarray(inference[key], dtype=np.float64)
        if stats.shape != (widths,) or len(names) != widths or not np.isfinite(stats).all():
            raise ValueError(f"{key} holds {stats.size} values for {widths} features")
    if not (np.asarray(inference["scale"]) != 0).all():
        raise ValueError("a scale is 0")


def _check_image(inference: dict[str, Any]) -> None:
    size, channels = inference["image_size"], inference["channels"]
    if not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE or channels not in (1, 3):
        raise ValueError(f"image_size {size!r} / channels {channels!r}")
    for key in ("mean", "std"):
        stats = np.asarray(inference[key], dtype=np.float64)
        if stats.shape != (channels,) or not np.isfinite(stats).all() or (key == "std" and not (stats != 0).all()):
            raise ValueError(f"{key} is not {channels} finite numbers")




def table_inputs(inference: dict[str, Any], frame: pd.DataFrame, *, source: str = "the data") -> torch.Tensor:
    """(rows, features) float32 model inputs; extra columns (the target, ids) are ignored."""
    frame = frame.rename(columns=str)
    columns = inference["columns"]
    missing = [c["name"] for c in columns if c["name"] not in frame.columns]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError("data", f"{source} lacks {len(missing)} column(s) the model was trained on: {shown}")
    parts = [_number(frame[c["name"]], c["name"], source) if c["kind"] == NUMBER else _indicators(frame[c["name"]], c["values"])
             for c in columns]
    x = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0), dtype=np.float32)
    if inference.get("impute") == "none":
        _refuse_missing(x, inference["feature_names"], source)
    pre = Preprocessor(fill=np.asarray(inference["fill"], dtype=np.float32),
                       center=np.asarray(inference["center"], dtype=np.float32),
                       scale=np.asarray(inference["scale"], dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(pre.transform(x)))


def _number(column: pd.Series, name: str, source: str) -> np.ndarray:
    if ptypes.is_bool_dtype(column) or ptypes.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float32, na_value=np.nan)[:, None]
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna() & column.notna()]
    if len(bad):
        raise DataError("data", f"column {name!r} of {source} holds numbers in training, but {len(bad)} of its "
                        f"values are not numbers (e.g. {str(bad.iloc[0])[:40]!r})")
    return numbers.to_numpy(dtype=np.float32, na_value=np.nan)[:, None]


def _indicators(column: pd.Series, values: list[str]) -> np.ndarray:
    # As tables.one_hot: a value unseen in training sets no indicator; a missing one sets all to NaN.
    text = column.astype(str).where(column.notna())
    out = np.stack([(text == v).to_numpy(dtype=np.float32) for v in values], axis=1) if values else \
        np.zeros((len(column), 0), dtype=np.float32)
    out[column.isna().to_numpy()] = np.nan
    return out


def _refuse_missing(x: np.ndarray, feature_names: list[str], source: str) -> None:
    per_feature = np.isnan(x).sum(axis=0)
    if per_feature.any():
        worst = int(np.argmax(per_feature))
        raise DataError("data", f"{source} has {int(per_feature.sum())} missing values (e.g. {int(per_feature[worst])} "
                        f"in {feature_names[worst]!r}); the model was trained with impute: none, so it cannot fill them")


def image_inputs(inference: dict[str, Any], images: list[Image.Image]) -> torch.Tensor:
    """(N, C, size, size) float32 inputs: resized, in [0, 1], normalised with the training statistics."""
    size, channels = int(inference["image_size"]), int(inference["channels"])
    x = np.stack([to_array(img, size, channels) for img in images]) if images else \
        np.zeros((0, channels, size, size), dtype=np.float32)
    mean = np.asarray(inference["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(inference["std"], dtype=np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(((x - mean) / std).astype(np.float32)))
