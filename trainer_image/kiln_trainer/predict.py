"""`kiln predict MODEL DATA`: a saved model.pt on new raw data, batch by batch, on the CPU by default.
Both may be local paths, pvc:// (under $KILN_PVC_ROOT, as `kiln run` maps it) or object-store URLs
read through fsspec (s3:// with s3fs installed: `kiln[s3]`).

The model's recipe (model_artifact.py, data/inference.py) turns raw rows into inputs: a CSV or
parquet table for a table model (its columns by name, in any order; others ignored), an image
file or a folder of them (searched recursively) for an image model, and a table for sequence and
text models (their own modules build the windows / token ids). The output has one row per input
row (per window for sequences): `prediction` in the target's original labels or units and, for
classification, one `proba_<class>` column per class.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import os
import posixpath
import sys
from collections.abc import Callable, Iterator
from typing import Any, Optional, TextIO

import numpy as np
import pandas as pd
import torch
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from PIL import Image, UnidentifiedImageError

from .data.errors import DataError, SpecError
from .data.images import IMAGE_SUFFIXES
from .data.inference import IMAGE_FORMAT, TABLE_FORMAT, check_recipe, image_inputs, table_inputs
from .model_artifact import ModelArtifact, read_artifact
from .storage import exists, files_under, is_dir, is_remote, open_file, pvc_root_from, resolve_location

DEFAULT_BATCH_SIZE = 1024
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# Formats whose recipe lives in another module: format -> (module, function(inference, frame) -> inputs).
DELEGATED_FORMATS = {
    "sequence": ("kiln_trainer.data.sequence", "sequence_inputs"),
    "text": ("kiln_trainer.data.text", "text_inputs"),
}
Chunk = tuple[pd.DataFrame, torch.Tensor]  # (columns to copy into the output, model inputs)


def predict_cli(model: str, data: str, *, output: Optional[str], device: str = "cpu",
                batch_size: int = DEFAULT_BATCH_SIZE, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Exit code 0, or 2 with one line naming what is wrong (never a traceback)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        rows = predict_file(model, data, output=output, device=device, batch_size=batch_size, out=out,
                            pvc_root=pvc_root_from(os.environ))
    except SpecError as exc:
        print(f"kiln predict: {exc}", file=err)
        return 2
    print(f"kiln predict: {rows} predictions" + (f" written to {output}" if output else ""), file=err)
    return 0


def predict_file(model: str, data: str, *, output: Optional[str], device: str = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, out: Optional[TextIO] = None, pvc_root: str = PVC_MOUNT_ROOT) -> int:
    """Predict every row of `data` into `output` (CSV, or parquet by suffix; None: CSV on `out`).
    `model` and `data` are paths, pvc:// (under `pvc_root`) or object-store URLs (fsspec)."""
    if batch_size < 1:
        raise SpecError("--batch-size", f"must be at least 1, got {batch_size}")
    artifact = read_artifact(model, pvc_root)
    net = artifact.build(_device(device))
    chunks = input_chunks(artifact, data, batch_size, pvc_root)
    frames = (chunk_predictions(artifact, net, inputs, batch_size).pipe(_prepend, kept) for kept, inputs in chunks)
    # The first chunk finds most mistakes (missing columns, wrong shapes) before any output is created.
    first = next(frames, None)
    if first is None or first.empty:
        raise DataError("data", f"{data}: no rows to predict")
    return write_frames(itertools.chain([first], frames), output, out or sys.stdout)


def predict_frame(artifact: ModelArtifact, frame: pd.DataFrame, *, device: str = "cpu",
                  batch_size: int = DEFAULT_BATCH_SIZE) -> pd.DataFrame:
    """Predictions for a table already in memory (tests, notebooks)."""
    check_recipe(artifact.metadata.inference, artifact.path)
    inputs = frame_inputs(artifact.metadata.inference, frame, "the frame")
    return chunk_predictions(artifact, artifact.build(_device(device)), inputs, batch_size)


def chunk_predictions(artifact: ModelArtifact, net: torch.nn.Module, inputs: torch.Tensor, batch_size: int) -> pd.DataFrame:
    """The output columns for `inputs`, run through `net` `batch_size` rows at a time."""
    meta = artifact.metadata
    _check_shape(inputs, meta.input_shape, artifact.path)
    device = next(net.parameters()).device
    with torch.inference_mode():
        outputs = [net(inputs[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(inputs), batch_size)]
    scores = torch.cat(outputs) if outputs else torch.zeros((0, meta.output_dim))
    if meta.task == "classification":
        proba = torch.softmax(scores, dim=1).numpy()
        names = np.asarray(meta.class_names, dtype=object)
        columns: dict[str, Any] = {"prediction": names[proba.argmax(axis=1)] if len(proba) else np.array([], dtype=object)}
        columns.update({f"proba_{name}": proba[:, i] for i, name in enumerate(meta.class_names)})
        return pd.DataFrame(columns)
    values = scores.numpy().astype(np.float64) * meta.target_std + meta.target_mean
    if values.shape[1] == 1:
        return pd.DataFrame({"prediction": values[:, 0]})
    return pd.DataFrame({f"prediction_{i}": values[:, i] for i in range(values.shape[1])})


def _check_shape(inputs: torch.Tensor, shape: list[int], path: str) -> None:
    if tuple(inputs.shape[1:]) != tuple(shape):
        raise DataError("data", f"the inputs have shape {tuple(inputs.shape[1:])} per row, but {path} takes {tuple(shape)}")


def _prepend(frame: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([kept.reset_index(drop=True), frame], axis=1) if len(kept.columns) else frame


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise SpecError("--device", f"{name!r} is not a device (cpu, cuda, cuda:1, ...)") from exc
    if device.type not in ("cpu", "cuda"):
        raise SpecError("--device", f"{name}: kiln predict runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", f"{name}: this machine has no CUDA device torch can use")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SpecError("--device", f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# ---------------------------------------------------------------------- reading the data


def input_chunks(artifact: ModelArtifact, data: str, batch_size: int, pvc_root: str = PVC_MOUNT_ROOT) -> Iterator[Chunk]:
    """(kept columns, inputs) per chunk of `data`, in the form the model's recipe expects."""
    inference = artifact.metadata.inference
    kind = inference.get("format")
    check_recipe(inference, artifact.path)
    location = data_location(data, pvc_root)
    if kind == IMAGE_FORMAT:
        files, base = image_files(location, data)
        return _image_chunks(inference, files, base, batch_size)
    if kind == TABLE_FORMAT:
        return ((pd.DataFrame(), table_inputs(inference, frame, source=data)) for frame in read_table(location, data, batch_size))
    if kind in DELEGATED_FORMATS:
        frame = pd.concat(list(read_table(location, data, None)), ignore_index=True)
        inputs = frame_inputs(inference, frame, data)
        keys = window_keys(inference, frame) if kind == "sequence" else pd.DataFrame()
        return iter([(keys if len(keys) == len(inputs) else pd.DataFrame(), inputs)])
    raise DataError("model", f"{artifact.path}: its inputs are described as format {kind!r}, which this Kiln "
                    "cannot predict on (a model saved without an input recipe?)")


def frame_inputs(inference: dict[str, Any], frame: pd.DataFrame, source: str) -> torch.Tensor:
    kind = inference.get("format")
    if kind == TABLE_FORMAT:
        return table_inputs(inference, frame, source=source)
    if kind not in DELEGATED_FORMATS:
        raise DataError("data", f"a model of format {kind!r} does not take a table")
    inputs = _delegate(str(kind))(inference, frame)
    if not isinstance(inputs, torch.Tensor):
        raise DataError("data", f"{source}: the {kind} recipe gave no tensor")
    return inputs


def window_keys(inference: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Which rows each window ends at (`row`, 0-based in the file) and its series (the groupBy column)."""
    from .data.sequence import series_of, window_starts

    length, stride, group_by = int(inference["length"]), int(inference["stride"]), inference.get("group_by")
    parts = []
    for series in series_of(frame, group_by):
        ends = window_starts(len(series), length, stride, 0) + length - 1
        part = {"row": series.index.to_numpy()[ends]}
        if group_by:
            part[group_by] = series[group_by].to_numpy()[ends]
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _delegate(kind: str) -> Callable[[dict[str, Any], pd.DataFrame], torch.Tensor]:
    module_name, function = DELEGATED_FORMATS[kind]
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise DataError("model", f"predicting on {kind} data is not supported by this Kiln "
                        f"({module_name}.{function} is missing)") from exc
    return fn


def data_location(data: str, pvc_root: str = PVC_MOUNT_ROOT) -> str:
    """Where `data` is (a path, pvc:// under `pvc_root`, an object-store URL), checked to exist."""
    location = resolve_location(data, pvc_root)
    try:
        found = exists(location)
    except (ImportError, OSError) as exc:  # s3:// without s3fs, no credentials, access denied
        raise DataError("data", f"{data}: cannot reach it: {exc}") from None
    if not found:
        raise DataError("data", f"{data}: no such file or directory")
    return location


def read_table(location: str, data: str, chunk_rows: Optional[int]) -> Iterator[pd.DataFrame]:
    """A CSV/TSV (compressed by its suffix or not) or parquet file in chunks of `chunk_rows` (None: whole)."""
    lower = data.lower()
    try:
        if is_dir(location):
            raise DataError("data", f"{data} is a directory; this model predicts on a CSV or parquet file")
        if lower.endswith(PARQUET_SUFFIXES):
            yield from _parquet_chunks(location, data, chunk_rows)
            return
        sep = "\t" if ".tsv" in lower else ","
        # pandas opens object-store URLs through fsspec and infers compression from the suffix.
        if chunk_rows is None:
            yield pd.read_csv(location, sep=sep)
            return
        with pd.read_csv(location, sep=sep, chunksize=chunk_rows) as reader:
            yield from reader
    except (ValueError, OSError, ImportError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        if isinstance(exc, SpecError):
            raise
        kind = "parquet" if lower.endswith(PARQUET_SUFFIXES) else "CSV"
        raise DataError("data", f"{data}: cannot read it as {kind}: {str(exc).strip()[:300]}") from exc


def _parquet_chunks(location: str, data: str, chunk_rows: Optional[int]) -> Iterator[pd.DataFrame]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        with open_file(location, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if chunk_rows is None:
                yield parquet.read().to_pandas()
                return
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
    except pyarrow.ArrowException as exc:
        raise DataError("data", f"{data}: cannot read it as parquet: {str(exc).strip()[:300]}") from exc


def image_files(location: str, data: str) -> tuple[list[str], str]:
    """One image file, or every image under a folder (recursively, sorted); and the folder their
    `path` column is relative to."""
    try:
        return _image_files(location, data)
    except (ImportError, OSError) as exc:  # an object store that stopped answering while listed
        raise DataError("data", f"{data}: cannot list it: {exc}") from None


def _image_files(location: str, data: str) -> tuple[list[str], str]:
    if not is_dir(location):
        if not location.lower().endswith(IMAGE_SUFFIXES):
            raise DataError("data", f"{data}: this model predicts on images ({', '.join(IMAGE_SUFFIXES)}) "
                            "or a folder of them")
        return [location], posixpath.dirname(location) if is_remote(location) else os.path.dirname(location)
    found = [path for path in files_under(location) if path.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise DataError("data", f"{data}: no image files ({', '.join(IMAGE_SUFFIXES)}) under it")
    return found, location


def _relative(path: str, base: str) -> str:
    if not is_remote(path):
        return os.path.relpath(path, base)
    return path[len(base.rstrip("/")) + 1:] if path.startswith(base.rstrip("/") + "/") else posixpath.basename(path)


def _image_chunks(inference: dict[str, Any], files: list[str], base: str, batch_size: int) -> Iterator[Chunk]:
    for start in range(0, len(files), batch_size):
        paths = files[start:start + batch_size]
        images = [_decode(path) for path in paths]
        yield pd.DataFrame({"path": [_relative(p, base) for p in paths]}), image_inputs(inference, images)


def _decode(path: str) -> Image.Image:
    try:
        with open_file(path, "rb") as handle:
            img = Image.open(io.BytesIO(handle.read()))
            img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError("data", f"cannot decode image {path}: {exc}") from exc
    return img


# ---------------------------------------------------------------------- writing the predictions


def write_frames(frames: Iterator[pd.DataFrame], output: Optional[str], out: TextIO) -> int:
    """Write the chunks as one CSV (or parquet file, by suffix); returns the number of rows."""
    if output is not None and output.lower().endswith(PARQUET_SUFFIXES):
        return _write_parquet(frames, output)
    rows = 0
    handle: TextIO = out
    try:
        if output is not None:
            handle = open(output, "w", newline="")  # noqa: SIM115 - closed below, stdout is not
        for frame in frames:
            frame.to_csv(handle, index=False, header=rows == 0)
            rows += len(frame)
    except OSError as exc:
        _discard(output, handle is not out)
        raise SpecError("--output", f"{output}: cannot write it: {exc.strerror or exc}") from exc
    except BaseException:
        _discard(output, handle is not out)  # a later chunk's bad value: no half-written predictions
        raise
    finally:
        if handle is not out:
            handle.close()
    return rows


def _discard(output: Optional[str], created: bool) -> None:
    if output is not None and created:
        with contextlib.suppress(OSError):
            os.remove(output)


def _write_parquet(frames: Iterator[pd.DataFrame], output: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: Optional[pq.ParquetWriter] = None
    rows = 0
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(output, table.schema)
            writer.write_table(table)
            rows += len(frame)
    except OSError as exc:
        raise SpecError("--output", f"{output}: cannot write it: {exc.strerror or exc}") from exc
    finally:
        if writer is not None:
            writer.close()
    return rows
