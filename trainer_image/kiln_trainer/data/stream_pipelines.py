"""Ray Data pipelines for streamed file sources: one per split, and the one-pass statistics.

- Tables (csv, parquet): every split reads the files and keeps its own rows (hash_split.py: a
  seeded hash of each row's values), encodes, imputes and scales them in Ray Data's CPU tasks,
  and hands workers float32 `x` and `y`. The statistics pass reads every row once.
- Image folders: files are listed (not read) and split by class folder (hash_split.py); each split
  decodes and resizes its own files in Ray Data's tasks and hands workers uint8 `image` (N, H, W, C)
  and `y`: the conversion to float, augmentation and scaling happen on the worker's device. The
  statistics pass decodes the training images once for the per-channel mean and deviation.
  A read task decodes about IMAGE_BLOCK_BYTES of images straight into one uint8 array (one Arrow
  tensor column per block): Ray Data's `read_images` builds a one-row Arrow table per image, converts
  the blocks to numpy and back to label them, and cuts a few thousand files into at least 200 read
  tasks, which cost about 1.6 ms of CPU per 128x128 JPEG where the decode itself is about 0.25 ms.
- Decoded cache: when the decoded training and validation images fit in CACHE_STORE_FRACTION of
  Ray's object store, the driver decodes them once (the statistics pass reads the cached blocks) and
  every epoch reads those blocks instead of decoding the files again. Larger sets stream from the
  files every epoch: the cache, and what a worker maps of it, never grows past that budget.
- Shuffling: the training split reads its files in a new order every epoch (a seeded file shuffle
  that reseeds per execution; a cached split: its blocks, of files in a seeded random order, in a new
  order every epoch) and each worker shuffles its stream in a buffer of `stream.shuffleBufferRows`
  rows. That is not a global shuffle: rows of one file (one block) stay near each other within an
  epoch. A global `random_shuffle` would move the whole data set through the object store every epoch.
- Sources go through fsspec (local paths, `pvc://` mounts, `s3://`), wrapped for pyarrow.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Optional

import fsspec
import numpy as np
import pandas as pd
from kiln_api.spec import DataFormat, DataSpec, Impute, Task

from .errors import DataError
from .hash_split import SPLITS, TRAIN, VALIDATION, row_positions, split_class_files, split_of_positions
from .images import GRAYSCALE_MODES, list_class_files
from .stream_plan import StreamPlan, data_key
from .stream_stats import (
    ChannelPartial,
    Moments,
    TablePartial,
    TableSchema,
    block_partial,
    column_moments,
    encode_block,
    fit_streamed,
    image_partial,
    table_schema,
)

PROBE_FILES = 8  # images decoded to choose grey or colour before streaming
# Ray Data's tasks ask for no CPU: the training workers hold every CPU Ray was given, and a task
# waiting for one would never run (a deadlock Ray Data reports as backpressure). They share the
# cores with training, as DataLoader workers would, in at most DATA_TASKS at a time per operator.
DATA_TASKS = 2
TASK_ARGS: dict[str, Any] = {"num_cpus": 0, "concurrency": DATA_TASKS}
# Decoded bytes per image block (one read task): large enough that a task's fixed cost (scheduling,
# its output's Arrow conversion and object-store put) is small beside its decoding, small enough that
# the shards of `streaming_split(equal=False)`, which hands out whole blocks, differ by few rows.
IMAGE_BLOCK_BYTES = 4 << 20
MIN_FILES_PER_BLOCK, MAX_FILES_PER_BLOCK = 8, 256
MIN_IMAGE_BLOCKS = 16  # a small split still has blocks for every worker
# Decoded training (and validation) images stay in the object store across epochs when they take at
# most this fraction of it; the rest is left to the blocks in flight and the workers' shuffle buffers.
CACHE_STORE_FRACTION = 0.4


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem) -> Any:
    """fsspec's filesystem as pyarrow's, which Ray Data reads with (local stays native)."""
    import pyarrow.fs as pafs

    if isinstance(fs, fsspec.implementations.local.LocalFileSystem) and type(fs) is fsspec.implementations.local.LocalFileSystem:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def source_bytes(fs: fsspec.AbstractFileSystem, root: str) -> int:
    return int(fs.du(root, total=True)) if fs.isdir(root) else int(fs.size(root))


class StreamSource:
    """A file source and how to read it with Ray Data."""

    def __init__(self, spec: DataSpec, fs: fsspec.AbstractFileSystem, root: str, data_format: DataFormat) -> None:
        self.spec, self.fs, self.root, self.format = spec, fs, root.rstrip("/") or root, data_format
        self.filesystem = pyarrow_filesystem(fs)
        split = spec.split
        self.seed, self.validation, self.test = split.seed, split.validation, split.test

    def build(self) -> tuple[StreamPlan, dict[str, Any]]:
        """The plan (one pass over the data) and a Ray Dataset per non-empty split."""
        if self.format == DataFormat.imagefolder:
            return self._build_images()
        return self._build_table()

    # ------------------------------------------------------------------ tables

    def _read_table(self) -> Any:
        import ray.data

        if self.format == DataFormat.parquet:
            # Ray Data's newer parquet reader lists files in a task that asks for a whole CPU, which
            # the training workers hold: it would wait forever. The older one honours TASK_ARGS.
            ray.data.DataContext.get_current().use_datasource_v2 = False
            return ray.data.read_parquet(self.root, filesystem=self.filesystem, **TASK_ARGS)
        delimiter = "\t" if self.root.lower().endswith(".tsv") else ","
        import pyarrow.csv as pacsv

        return ray.data.read_csv(self.root, filesystem=self.filesystem, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                 **TASK_ARGS)

    def _build_table(self) -> tuple[StreamPlan, dict[str, Any]]:
        spec = self.spec
        target, impute = spec.target, spec.preprocessing.impute
        seed, val, test = self.seed, self.validation, self.test
        if spec.preprocessing.impute == Impute.median:
            fit_streamed([], 0, spec.preprocessing)  # raises the field's error before any reading

        def reduce_block(frame: pd.DataFrame) -> dict[str, np.ndarray]:
            # A setting error goes back as data: Ray would wrap a raised one in its own error types.
            if target not in frame.columns:
                error = DataError("spec.data.target", f"column {target!r} not found in {spec.source} "
                                  f"(columns: {', '.join(map(str, list(frame.columns)[:20]))})")
                return {"partial": np.array([json.dumps({"error": [error.field, error.message]})])}
            codes = split_of_positions(row_positions(frame, seed), val, test)
            part = block_partial(frame, codes, target=target, impute=impute)
            return {"partial": np.array([_partial_json(part)])}

        partial = TablePartial()
        with setting_errors_unwrapped(spec.source):
            for row in self._read_table().map_batches(reduce_block, batch_format="pandas", batch_size=None,
                                                      **TASK_ARGS).iter_rows():
                partial = partial.merge(_partial_from_json(row["partial"]))
        task = None if spec.task == Task.auto else spec.task.value
        schema = table_schema(partial, task=task, source=spec.source, target=target)
        if partial.missing and impute == Impute.none:
            raise DataError("spec.data.preprocessing.impute",
                            f"{spec.source} has {partial.missing} missing values and impute is none; choose mean or drop")
        train_rows = partial.rows.get(TRAIN, 0)
        if train_rows < 1:
            raise DataError("spec.data.split", f"{spec.source}: no row fell into the training split")
        pre = fit_streamed(column_moments(partial, schema), train_rows, spec.preprocessing)
        target_mean, target_std = 0.0, 1.0
        if schema.task == "regression":
            m = partial.target_moments
            target_mean, target_std = m.mean, (float(np.sqrt(m.m2 / m.count)) if m.count else 0.0) or 1.0
        plan = StreamPlan(
            kind="table", source=spec.source, task=schema.task, class_names=[str(c) for c in schema.class_values],
            feature_names=schema.feature_names, input_shape=[len(schema.feature_names)],
            output_dim=len(schema.class_values) if schema.task == "classification" else 1, rows=partial.rows,
            fill=pre.fill.tolist(), center=pre.center.tolist(), scale=pre.scale.tolist(), target_mean=target_mean,
            target_std=target_std, missing_values=partial.missing, table_schema=asdict(schema), data_key=data_key(spec),
        )
        return plan, self.datasets(plan)

    def datasets(self, plan: StreamPlan, cached: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """A Ray Dataset per non-empty split, made with `plan`'s statistics. Image splits that fit the
        object-store budget are decoded once into it (`cached`: splits already decoded there)."""
        if plan.kind == "table":
            return {name: self.table_split(plan, name) for name in SPLITS if plan.rows.get(name, 0) > 0}
        files = self._split_files(self._classes())
        mode = "L" if plan.input_shape[0] == 1 else "RGB"
        return self._image_datasets(plan.class_names, files, mode, self._cache_decision(files, mode), cached or {})

    def _image_datasets(self, class_names: list[str], files: dict[str, list[tuple[str, int]]], mode: str,
                        keep: set[str], cached: dict[str, Any]) -> dict[str, Any]:
        """A Ray Dataset per non-empty image split: those in `keep` decoded into the object store
        (taken from `cached` where already decoded there), the others streamed."""
        out: dict[str, Any] = {}
        for name in SPLITS:
            if not files[name]:
                continue
            if name in cached or name in keep:
                split = cached[name] if name in cached else self.cached_image_split(files[name], class_names, mode)
                # A new block order every epoch (seeded, reseeded per execution), as the files' order is
                # when they are read again every epoch.
                out[name] = split.randomize_block_order(seed=reseeded(self.seed)) if name == TRAIN else split
            else:
                out[name] = self.image_split(files[name], class_names, mode, shuffle=name == TRAIN)
        return out

    def _cache_decision(self, files: dict[str, list[tuple[str, int]]], mode: str) -> set[str]:
        """The splits decoded into the object store (`cached_splits`), against this cluster's budget."""
        return cached_splits({name: len(files[name]) for name in SPLITS}, image_bytes(self.spec.image_size, mode),
                             cache_budget_bytes())

    def table_split(self, plan: StreamPlan, split: str) -> Any:
        """The rows of one split, encoded and scaled: columns `x` (float32, F) and `y`."""
        schema = TableSchema(**plan.table_schema)
        pre, spec = plan.preprocessor(), self.spec
        target, impute, seed, val, test = spec.target, spec.preprocessing.impute, self.seed, self.validation, self.test
        code, mean, std = SPLITS.index(split), plan.target_mean, plan.target_std

        def encode(frame: pd.DataFrame) -> dict[str, np.ndarray]:
            frame = frame[frame[target].notna()]
            frame = frame[split_of_positions(row_positions(frame, seed), val, test) == code]
            x, y = encode_block(frame, schema, target=target)
            if impute == Impute.drop:
                keep = ~np.isnan(x).any(axis=1)
                x, y = x[keep], y[keep]
            if schema.task == "regression":
                y = ((y - mean) / std).astype(np.float32).reshape(-1, 1)
            return {"x": pre.transform(x) if len(x) else x, "y": y}

        return self._read_table().map_batches(encode, batch_format="pandas", **TASK_ARGS)

    # ------------------------------------------------------------------ image folders

    def _build_images(self) -> tuple[StreamPlan, dict[str, Any]]:
        spec = self.spec
        classes = self._classes()
        files = self._split_files(classes)
        mode = self._probe_mode(files[TRAIN])
        channels = 1 if mode == "L" else 3
        partial = ChannelPartial()
        names = [name for name, _ in classes]
        cached: dict[str, Any] = {}
        keep = self._cache_decision(files, mode)  # once: the statistics pass and the datasets follow it
        if TRAIN in keep:
            # Decoded once, here: the statistics pass and every epoch read the cached blocks.
            with setting_errors_unwrapped(spec.source):
                train = cached[TRAIN] = self.cached_image_split(files[TRAIN], names, mode)
        else:
            train = self.image_split(files[TRAIN], names, mode, shuffle=False)
        stats = train.map_batches(lambda b: {"partial": np.array([json.dumps([asdict(m) for m in image_partial(b["image"]).channels])])},
                                  batch_size=256, **TASK_ARGS)
        with setting_errors_unwrapped(spec.source):
            for row in stats.iter_rows():
                partial = partial.merge(ChannelPartial([Moments(**m) for m in json.loads(row["partial"])]))
        pre = fit_streamed(partial.channels, partial.channels[0].count if partial.channels else 0, spec.preprocessing)
        size = spec.image_size
        plan = StreamPlan(
            kind="image", source=spec.source, task="classification", class_names=names, feature_names=[],
            input_shape=[channels, size, size], output_dim=len(names), rows={k: len(v) for k, v in files.items()},
            fill=pre.fill.tolist(), center=pre.center.tolist(), scale=pre.scale.tolist(), data_key=data_key(spec),
        )
        return plan, self._image_datasets(names, files, mode, keep, cached)

    def _classes(self) -> list[tuple[str, list[str]]]:
        return list_class_files(self.fs, self.root, self.spec.source)

    def _split_files(self, classes: list[tuple[str, list[str]]]) -> dict[str, list[tuple[str, int]]]:
        return split_class_files(classes, seed=self.seed, validation=self.validation, test=self.test, root=self.root)

    def _probe_mode(self, train_files: list[tuple[str, int]]) -> str:
        from PIL import Image

        for path, _ in train_files[:PROBE_FILES]:
            with self.fs.open(path, "rb") as handle, Image.open(handle) as img:
                if img.mode not in GRAYSCALE_MODES:
                    return "RGB"
        return "L"

    def image_split(self, files: list[tuple[str, int]], class_names: list[str], mode: str, *, shuffle: bool) -> Any:
        """uint8 images (N, H, W, C) and class indices of `files`, decoded and resized in Ray Data's tasks,
        a block of about IMAGE_BLOCK_BYTES per task."""
        import ray.data
        from ray.data import FileShuffleConfig

        index = {name: i for i, name in enumerate(class_names)}
        size = self.spec.image_size
        per_block = min(files_per_block(image_bytes(size, mode)), -(-len(files) // MIN_IMAGE_BLOCKS))
        dataset = ray.data.read_binary_files(
            [path for path, _ in files], filesystem=self.filesystem, include_paths=True,
            shuffle=FileShuffleConfig(seed=self.seed) if shuffle else None, file_extensions=None,
            override_num_blocks=max(1, -(-len(files) // per_block)), **TASK_ARGS,
        )

        def decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return decode_batch(batch["bytes"], batch["path"], size=size, mode=mode, index=index)

        # batch_size None: a read task's whole block at once (the map is fused into the read task).
        return dataset.map_batches(decode, batch_size=None, **TASK_ARGS)

    def cached_image_split(self, files: list[tuple[str, int]], class_names: list[str], mode: str) -> Any:
        """`image_split` decoded once into the object store (a MaterializedDataset), its files in a
        seeded random order so every block mixes classes."""
        order = np.random.default_rng([self.seed, len(files)]).permutation(len(files))
        return self.image_split([files[i] for i in order], class_names, mode, shuffle=False).materialize()


def image_bytes(size: int, mode: str) -> int:
    """Decoded bytes of one image."""
    return size * size * (1 if mode == "L" else 3)


def files_per_block(nbytes: int) -> int:
    return int(min(MAX_FILES_PER_BLOCK, max(MIN_FILES_PER_BLOCK, IMAGE_BLOCK_BYTES // max(nbytes, 1))))


def cache_budget_bytes() -> int:
    """CACHE_STORE_FRACTION of the smallest node's object store: the cached blocks may all land on one
    node (0 when Ray does not say)."""
    import ray

    try:
        stores = [node["Resources"].get("object_store_memory", 0) for node in ray.nodes() if node.get("Alive")]
    except Exception:  # noqa: BLE001 - no cluster: nothing to cache in
        return 0
    return int(CACHE_STORE_FRACTION * min(stores)) if stores else 0


def cached_splits(files: dict[str, int], nbytes: int, budget: int) -> set[str]:
    """The splits whose decoded images are kept in the object store: the training split when it fits
    the budget, then the validation split if it still fits (both are read every epoch; the test split
    once)."""
    keep: set[str] = set()
    for name in (TRAIN, VALIDATION):
        need = files.get(name, 0) * nbytes
        if need and need <= budget:
            keep.add(name)
            budget -= need
        elif name == TRAIN:
            break  # a validation split is not worth the store while the training split streams
    return keep


def reseeded(seed: int) -> Any:
    """A seed that gives a different (reproducible) order on every execution of a dataset: every epoch."""
    from ray.data import RandomSeedConfig

    return RandomSeedConfig(seed=seed, reseed_after_execution=True)


def decode_batch(data: np.ndarray, paths: np.ndarray, *, size: int, mode: str, index: dict[str, int]) -> dict[str, np.ndarray]:
    """Encoded files -> {"image": uint8 (N, size, size, C), "y": int64 class indices (the parent folder)}.
    Converted, then resized as the in-memory path and prediction do (images.to_array)."""
    from PIL import Image, UnidentifiedImageError

    channels = 1 if mode == "L" else 3
    images = np.empty((len(data), size, size, channels), dtype=np.uint8)
    for i, raw in enumerate(data):
        try:
            with Image.open(io.BytesIO(raw)) as img:
                img = img.convert(mode)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image {paths[i]}: {exc}") from exc
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(img).reshape(size, size, channels)
    y = np.fromiter((index[posixpath.basename(posixpath.dirname(str(p)))] for p in paths), dtype=np.int64, count=len(paths))
    return {"image": images, "y": y}


@contextlib.contextmanager
def setting_errors_unwrapped(source: str) -> Iterator[None]:
    """What Ray Data could not read (a malformed file, a lost connection) as a DataError naming the
    source, with the last line of Ray's error instead of its remote traceback."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps whatever the task raised
        first_line = str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
        raise DataError("spec.data.source", f"{source}: cannot read it: {first_line}") from exc


def _partial_json(part: TablePartial) -> str:
    data = asdict(part)
    data["target_counts"] = [[k, v] for k, v in part.target_counts.items()]
    return json.dumps(data)


def _partial_from_json(text: str) -> TablePartial:
    data = json.loads(text)
    if "error" in data:
        raise DataError(*data["error"])
    return TablePartial(
        rows=data["rows"], numeric={k: Moments(**v) for k, v in data["numeric"].items()}, text=data["text"],
        target_counts={k: v for k, v in data["target_counts"]}, target_numeric=data["target_numeric"],
        target_integer=data["target_integer"], target_moments=Moments(**data["target_moments"]), missing=data["missing"],
    )


def open_source(spec: DataSpec, location: str, data_format: DataFormat,
                fs: Optional[fsspec.AbstractFileSystem] = None) -> StreamSource:
    """`location` (a resolved path or URL) as a stream source; `fs` overrides the filesystem."""
    if fs is None:
        fs, root = fsspec.core.url_to_fs(location)
    else:
        root = location
    return StreamSource(spec, fs, root, data_format)
