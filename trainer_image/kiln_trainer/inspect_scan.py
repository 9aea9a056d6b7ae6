"""One capped pass over a table source for `kiln inspect`: exact counts and a uniform row sample.

The source is read in chunks of CHUNK_ROWS, so memory holds one chunk, the sample (at most
`sample_rows` rows, drawn by bottom-k of seeded random keys, so every row is equally likely) and
one 8-byte hash per row for duplicate counting (up to MAX_HASHED_ROWS rows). Each chunk also goes
through the trainer's own reduction (stream_stats.block_partial) so that rows used, classes and,
for streamed jobs, the hash split (hash_split.py) are the trainer's figures, not a copy of them.

Readers follow the trainer: an in-memory job's CSV through pandas (tables.py), a streamed job's
CSV through pyarrow's streaming reader as Ray Data reads it (the row hash that splits streamed
rows depends on the column types a reader infers), Parquet through pyarrow by row group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
from kiln_api.spec import DataFormat, DataSpec, Impute, Task

from .data.errors import DataError
from .data.hash_split import SPLITS, row_positions, split_of_positions
from .data.stream_stats import TablePartial, block_partial
from .data.tables import MAX_AUTO_CLASSES
from .inspect_data import ExactCounts
from .storage import open_file

CHUNK_ROWS = 50_000
SAMPLE_ROWS = 100_000  # rows analysed for distributions, outliers and correlations
MAX_HASHED_ROWS = 20_000_000  # duplicate rows are counted among the first this many (8 bytes a row)


@dataclass
class TableScan:
    """What one pass over the rows leaves: a sample (with each row's split code) and the counts."""

    target: str
    impute: Impute
    split_codes: Callable[[pd.DataFrame], np.ndarray]
    sample_rows: int = SAMPLE_ROWS
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)
    seen: dict[str, set] = field(default_factory=dict)  # up to two distinct values per column
    hashes: list[np.ndarray] = field(default_factory=list)
    partial: TablePartial = field(default_factory=TablePartial)
    sample: Optional[pd.DataFrame] = None
    sample_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add(self, frame: pd.DataFrame, source: str) -> None:
        if not self.columns:
            self.columns = [str(c) for c in frame.columns]
            if self.target not in frame.columns:
                raise DataError("spec.data.target", f"column {self.target!r} not found in {source} "
                                f"(columns: {', '.join(self.columns[:20])})")
        self.rows += len(frame)
        for name, count in frame.isna().sum().items():
            self.missing[str(name)] = self.missing.get(str(name), 0) + int(count)
        for name in frame.columns:
            seen = self.seen.setdefault(str(name), set())
            if len(seen) < 2:
                seen.update(_plain(v) for v in frame[name].dropna().unique()[:2])
        if sum(len(h) for h in self.hashes) < MAX_HASHED_ROWS:
            self.hashes.append(pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64))
        codes = self.split_codes(frame)
        with np.errstate(invalid="ignore"):  # infinite values: their moments are the trainer's problem, not ours
            part = block_partial(frame, codes, target=self.target, impute=self.impute)
        self.partial = self.partial.merge(part)
        self._add_to_sample(frame, codes)

    def _add_to_sample(self, frame: pd.DataFrame, codes: np.ndarray) -> None:
        keys = self.rng.random(len(frame))
        if self.sample is None:
            sample, all_keys, all_codes = frame.reset_index(drop=True), keys, codes
        else:
            sample = pd.concat([self.sample, frame], ignore_index=True)
            all_keys, all_codes = np.concatenate([self.keys, keys]), np.concatenate([self.sample_codes, codes])
        if len(sample) > self.sample_rows:
            keep = np.sort(np.argsort(all_keys, kind="stable")[: self.sample_rows])
            sample, all_keys, all_codes = sample.iloc[keep].reset_index(drop=True), all_keys[keep], all_codes[keep]
        self.sample, self.keys, self.sample_codes = sample, all_keys, all_codes

    @property
    def sampled(self) -> bool:
        return self.rows > self.sample_rows

    def duplicates(self) -> Optional[int]:
        if not self.hashes:
            return None
        hashed = np.sort(np.concatenate(self.hashes))
        return int((hashed[1:] == hashed[:-1]).sum())

    def task(self, requested: Task) -> str:
        """The spec's task, else the trainer's inference (tables.infer_task's rule)."""
        if requested != Task.auto:
            return requested.value
        part = self.partial
        if not part.target_numeric or (part.target_integer and len(part.target_counts) <= MAX_AUTO_CLASSES):
            return "classification"
        return "regression"

    def exact(self, task: str) -> ExactCounts:
        constant = [name for name in self.columns if len(self.seen.get(name, ())) <= 1 and name != self.target]
        counts = {str(k): int(v) for k, v in self.partial.target_counts.items()} if task == "classification" else {}
        return ExactCounts(rows=self.rows, missing=self.missing, constant=constant, duplicates=self.duplicates(),
                           class_counts=counts, rows_used=sum(self.partial.rows.values()))

    def sampling(self) -> dict[str, Any]:
        if not self.sampled:
            return {"sampled": False, "rows_analysed": self.rows, "rows_total": self.rows}
        hashed = sum(len(h) for h in self.hashes)
        note = (f"distributions, outliers and correlations from a uniform random sample of {self.sample_rows:,} of "
                f"{self.rows:,} rows; rows, missing values, constant columns, classes and splits counted over every row")
        if hashed < self.rows:
            note += f"; duplicates among the first {hashed:,} rows"
        return {"sampled": True, "rows_analysed": self.sample_rows, "rows_total": self.rows, "note": note}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def stream_codes(seed: int, validation: float, test: float) -> Callable[[pd.DataFrame], np.ndarray]:
    """A streamed job's split of a chunk: the trainer's seeded row hash (hash_split.py)."""
    return lambda frame: split_of_positions(row_positions(frame, seed), validation, test)


def memory_codes(frame: pd.DataFrame) -> np.ndarray:
    """In memory, rows are split after loading (split.py); until then every row counts as training."""
    return np.zeros(len(frame), dtype=np.int8)


def table_chunks(location: str, data_format: DataFormat, *, streamed: bool, source: str,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The rows of a CSV or Parquet file, `chunk_rows` at a time, read as the trainer reads them."""
    try:
        if data_format == DataFormat.parquet:
            yield from _parquet_chunks(location, chunk_rows)
        elif streamed:
            yield from _arrow_csv_chunks(location, chunk_rows)
        else:
            with open_file(location, "rb") as handle:
                sep = "\t" if location.lower().endswith(".tsv") else ","
                with pd.read_csv(handle, sep=sep, chunksize=chunk_rows) as reader:
                    yield from reader
    except DataError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise DataError("spec.data.source", f"{source}: cannot read it as {data_format.value}: {exc}") from exc


def _parquet_chunks(location: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    with open_file(location, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()


def _arrow_csv_chunks(location: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import fsspec
    import pyarrow.csv as pacsv

    delimiter = "\t" if location.lower().endswith(".tsv") else ","
    # Ray Data decompresses by extension too; fsspec's "infer" does the same here.
    with fsspec.open(location, "rb", compression="infer") as handle:
        reader = pacsv.open_csv(handle, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                read_options=pacsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 64)))
        for batch in reader:
            yield batch.to_pandas()


def scan_frames(frames: Iterator[pd.DataFrame], spec: DataSpec, *, streamed: bool, source: str,
                sample_rows: int = SAMPLE_ROWS) -> TableScan:
    split = spec.split
    codes = stream_codes(split.seed, split.validation, split.test) if streamed else memory_codes
    scan = TableScan(target=spec.target, impute=spec.preprocessing.impute, split_codes=codes, sample_rows=sample_rows)
    try:
        for frame in frames:
            if len(frame):
                scan.add(frame, source)
    except TypeError as exc:  # e.g. Parquet list or struct columns, which nothing here can count or hash
        raise DataError("spec.data.source", f"{source}: a column holds values kiln cannot analyse "
                        f"(nested lists or records?): {exc}") from exc
    if scan.sample is None:
        raise DataError("spec.data.source", f"{source} has no rows")
    return scan


def split_rows(scan: TableScan, spec: DataSpec, *, streamed: bool) -> dict[str, Any]:
    """Rows per split as training would cut them: the hash split's counts, or split.py's sizes."""
    from .data.split import split_sizes

    if streamed:
        rows = {name: int(scan.partial.rows.get(name, 0)) for name in SPLITS}
        return {"loading": "stream", "method": "seeded hash of each row (hash_split.py)", **rows}
    split = spec.split
    sizes = split_sizes(sum(scan.partial.rows.values()), split.validation, split.test)
    return {"loading": "memory", "method": "seeded shuffle, stratified by class where possible (split.py)",
            **dict(zip(SPLITS, sizes, strict=True))}
