"""Turn `spec.data.source` into `RawData`: builtin and synthetic sets here, files elsewhere."""

from __future__ import annotations

import importlib.util
import math
import os
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import pandas as pd
from kiln_api.spec import DataFormat, DataSpec, Task

from ..storage import exists, is_dir, open_file, resolve_location
from .errors import DataError
from .images import load_image_folder
from .raw import CLASSIFICATION, IMAGE, REGRESSION, TABLE, RawData
from .slice_columns import NO_COLUMNS, ColumnRequest
from .tables import load_table

IMAGE_ARCHITECTURES = ("cnn", "resnet18", "resnet34", "resnet50")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def load_raw(spec: DataSpec, *, pvc_root: str, for_architecture: str, columns: ColumnRequest = NO_COLUMNS) -> RawData:
    """Load the data a spec names, unsplit and unscaled."""
    source = spec.source
    if source.startswith("builtin:"):
        raw = load_builtin(source.removeprefix("builtin:"), as_image=for_architecture in IMAGE_ARCHITECTURES)
    elif source.startswith("synthetic:"):
        raw = load_synthetic(spec)
    else:
        raw = load_location(spec, pvc_root, columns)
    _check_task(spec, raw)
    return raw


BUILTIN_SETS = ("digits", "iris", "wine", "breast_cancer")


def digits_file() -> Optional[str]:
    """scikit-learn's digits file, found without importing scikit-learn (1-2 s of a local start)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    return path if os.path.isfile(path) else None


def load_digits_quickly() -> Optional[dict[str, Any]]:
    """The same arrays as sklearn.datasets.load_digits, read straight from its file."""
    path = digits_file()
    if path is None:
        return None
    table = np.loadtxt(path, delimiter=",")
    data, target = table[:, :-1], table[:, -1].astype(int)
    return {
        "data": data, "target": target, "images": data.reshape(-1, 8, 8), "target_names": np.arange(10),
        "feature_names": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
    }


def _builtin_bunch(name: str) -> Any:
    if name not in BUILTIN_SETS:
        raise DataError("spec.data.source", f"unknown builtin data set {name!r}; choose one of {', '.join(BUILTIN_SETS)}")
    if name == "digits" and (quick := load_digits_quickly()) is not None:
        return SimpleNamespace(**quick)
    from sklearn import datasets

    return getattr(datasets, f"load_{name}")()


def load_builtin(name: str, *, as_image: bool) -> RawData:
    """scikit-learn's bundled sets; digits as (1, 8, 8) images for convolutional models."""
    bunch = _builtin_bunch(name)
    class_names = [str(n) for n in bunch.target_names]
    y = np.asarray(bunch.target, dtype=np.int64)
    if name == "digits" and as_image:
        # Pixel intensities are 0..16 in load_digits; images live in [0, 1] like decoded files.
        x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
        return RawData(x=x, y=y, task=CLASSIFICATION, kind=IMAGE, source=f"builtin:{name}", class_names=class_names)
    features = [str(f) for f in getattr(bunch, "feature_names", [])] or [f"f{i}" for i in range(bunch.data.shape[1])]
    x = np.asarray(bunch.data, dtype=np.float32)
    return RawData(x=x, y=y, task=CLASSIFICATION, kind=TABLE, source=f"builtin:{name}", class_names=class_names, feature_names=features)


def load_synthetic(spec: DataSpec) -> RawData:
    """A deterministic function of `spec.synthetic` and `spec.split.seed`."""
    from sklearn import datasets

    kind = spec.source.removeprefix("synthetic:")
    syn, seed = spec.synthetic, spec.split.seed
    names = [f"f{i}" for i in range(syn.features)]
    if kind == "regression":
        x, y = datasets.make_regression(
            n_samples=syn.samples, n_features=syn.features, n_informative=min(syn.features, 10), noise=syn.noise, random_state=seed
        )
        return RawData(x=x.astype(np.float32), y=y.astype(np.float32), task=REGRESSION, kind=TABLE, source=spec.source, feature_names=names)
    if kind != "classification":
        raise DataError("spec.data.source", f"unknown synthetic data set {kind!r}; choose classification, regression, sequence or text")
    # make_classification puts each class on a hypercube vertex: it needs 2**informative >= classes.
    informative = max(math.ceil(math.log2(syn.classes)), min(syn.features, 2 + syn.features // 2))
    if informative > syn.features:
        raise DataError(
            "spec.data.synthetic.features",
            f"{syn.classes} classes need at least {informative} features, got {syn.features}",
        )
    if syn.noise > 1.0:
        raise DataError("spec.data.synthetic.noise", f"for synthetic:classification noise is the flipped label fraction (0..1), got {syn.noise}")
    x, y = datasets.make_classification(
        n_samples=syn.samples,
        n_features=syn.features,
        n_informative=informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=syn.classes,
        n_clusters_per_class=1,
        flip_y=syn.noise,
        random_state=seed,
    )
    class_names = [str(c) for c in range(syn.classes)]
    return RawData(
        x=x.astype(np.float32), y=y.astype(np.int64), task=CLASSIFICATION, kind=TABLE, source=spec.source,
        class_names=class_names, feature_names=names,
    )


def load_location(spec: DataSpec, pvc_root: str, columns: ColumnRequest = NO_COLUMNS) -> RawData:
    """A CSV/Parquet file or an image folder on a local path, a PVC or S3."""
    location = resolve_location(spec.source, pvc_root)
    try:
        found = exists(location)
    except (ImportError, OSError) as exc:  # e.g. s3:// without s3fs installed, or no credentials
        raise DataError("spec.data.source", f"{spec.source}: cannot reach {location}: {exc}") from exc
    if not found:
        raise DataError("spec.data.source", f"{spec.source}: no such file or directory ({location})")
    data_format = infer_format(spec.format, location, is_dir(location))
    if data_format == DataFormat.imagefolder:
        return load_image_folder(location, spec.image_size, source=spec.source)
    task = None if spec.task == Task.auto else spec.task.value
    return load_table(location, data_format.value, target=spec.target, task=task, source=spec.source, columns=columns)


def load_frame(spec: DataSpec, pvc_root: str) -> pd.DataFrame:
    """A CSV or Parquet file as a frame (format sequence/text: the suffix says which, CSV by default)."""
    location = resolve_location(spec.source, pvc_root)
    try:
        found = exists(location)
    except (ImportError, OSError) as exc:
        raise DataError("spec.data.source", f"{spec.source}: cannot reach {location}: {exc}") from exc
    if not found or is_dir(location):
        raise DataError("spec.data.source", f"{spec.source}: no such file ({location}); format {spec.format.value} reads one csv or parquet file")
    parquet = location.lower().endswith(PARQUET_SUFFIXES)
    try:
        with open_file(location, "rb") as handle:
            if parquet:
                return pd.read_parquet(handle)
            return pd.read_csv(handle, sep="\t" if location.lower().endswith(".tsv") else ",")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError("spec.data.source", f"{spec.source}: cannot read it as {'parquet' if parquet else 'csv'}: {exc}") from exc


def infer_format(requested: DataFormat, location: str, is_dir: bool) -> DataFormat:
    """`auto`: a directory is an image folder; files go by their extension."""
    if requested != DataFormat.auto:
        if is_dir != (requested == DataFormat.imagefolder):
            what = "a directory" if is_dir else "a file"
            raise DataError("spec.data.format", f"{requested.value} does not fit {location}, which is {what}")
        return requested
    if is_dir:
        return DataFormat.imagefolder
    lower = location.lower()
    if lower.endswith(CSV_SUFFIXES):
        return DataFormat.csv
    if lower.endswith(PARQUET_SUFFIXES):
        return DataFormat.parquet
    raise DataError(
        "spec.data.format",
        f"cannot infer the format of {location} from its extension; set format to csv, parquet or imagefolder",
    )


def _check_task(spec: DataSpec, raw: RawData) -> None:
    if spec.task != Task.auto and spec.task.value != raw.task:
        raise DataError("spec.data.task", f"{spec.source} is a {raw.task} data set, but task is {spec.task.value}")
