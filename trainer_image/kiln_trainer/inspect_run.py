"""`kiln inspect FILE [--output DIR]`: the job's data source, analysed before any training.

Reads the manifest as `kiln run` does, finds the data as the trainer would (data/sources.py:
builtin and synthetic sets, local paths, pvc:// and s3://), decides memory or stream as the
driver would (stream_plan.choose_loading), and hands the rows to the pure analysis modules
(inspect_data, inspect_images, inspect_text). Prints the report; `--output DIR` also writes
DIR/inspect.json and DIR/inspect.png. A setting or data problem exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, TextIO

import numpy as np
import pandas as pd
from kiln_api import TrainingJob
from kiln_api.loading import load_jobs
from kiln_api.spec import DataFormat, DataSpec, Impute, Task
from kiln_api.storage_paths import PVC_MOUNT_ROOT

from .data.errors import DataError, SpecError
from .data.split import split_indices, split_sizes
from .data.stream_plan import STREAM, choose_loading
from .data.tables import encode_labels
from .inspect_data import warning
from .inspect_images import SAMPLE_IMAGES, image_report
from .inspect_render import render_report
from .inspect_scan import SAMPLE_ROWS, TableScan, scan_frames, split_rows, table_chunks
from .inspect_text import DEFAULT_VOCAB_SIZE, coverage_warning, text_report
from .storage import pvc_root_from

EXIT_OK, EXIT_INVALID = 0, 2
# A synthetic set above this many values is generated smaller for the analysis (its split sizes
# are still the full set's): the generator has no way to produce only some of its rows.
MAX_SYNTHETIC_VALUES = 20_000_000
BUILTIN_TARGET = "target"
UNSUPPORTED_SETS = ("synthetic:sequence", "synthetic:text")


def load_job(file: str) -> TrainingJob:
    """The manifest's one TrainingJob, validated as `kiln run` and `kiln validate` do."""
    jobs = load_jobs(file)
    if len(jobs) != 1:
        raise ValueError(f"{file}: expected exactly one TrainingJob document, found {len(jobs)}")
    return jobs[0]


def inspect_job(job: TrainingJob, *, pvc_root: str = PVC_MOUNT_ROOT, sample_rows: int = SAMPLE_ROWS,
                sample_images: int = SAMPLE_IMAGES, text_column: Optional[str] = None,
                vocab_size: Optional[int] = None) -> dict[str, Any]:
    """The report of a job's data source (DataError when it cannot be read)."""
    spec = job.spec.data
    text = text_settings(spec, text_column, vocab_size)
    if spec.source in UNSUPPORTED_SETS:
        raise DataError("spec.data.source", f"kiln inspect does not analyse {spec.source} (a generated "
                        "sequence/text set); inspect a csv or parquet file of the same format instead")
    if spec.source.startswith(("builtin:", "synthetic:")):
        return in_memory_set_report(spec, sample_rows=sample_rows)
    from .data.sources import PARQUET_SUFFIXES, infer_format
    from .data.stream_pipelines import source_bytes
    from .storage import exists, is_dir, resolve_location

    location = resolve_location(spec.source, pvc_root)
    try:
        if not exists(location):
            raise DataError("spec.data.source", f"{spec.source}: no such file or directory ({location})")
        data_format = infer_format(spec.format, location, is_dir(location))
        import fsspec

        fs, root = fsspec.core.url_to_fs(location)
        streamed = choose_loading(spec, source_bytes(fs, root)) == STREAM
    except (ImportError, OSError) as exc:  # e.g. s3:// without s3fs installed, or no credentials
        raise DataError("spec.data.source", f"{spec.source}: cannot reach {location}: {exc}") from exc
    if data_format == DataFormat.imagefolder:
        return image_report(location, spec, streamed=streamed, sample_images=sample_images)
    if data_format not in (DataFormat.csv, DataFormat.parquet):  # a text source is a table with a text column
        data_format = DataFormat.parquet if location.lower().endswith(PARQUET_SUFFIXES) else DataFormat.csv
    if spec.format.value == "text":  # the text loader (data/text.py) keeps rows with gaps in other columns
        spec = spec.model_copy(update={"preprocessing": spec.preprocessing.model_copy(update={"impute": Impute.mean})})
    frames = table_chunks(location, data_format, streamed=streamed, source=spec.source)
    scan = scan_frames(frames, spec, streamed=streamed, source=spec.source, sample_rows=sample_rows)
    return table_from_scan(scan, spec, streamed=streamed, text=text)


@dataclass(frozen=True)
class TextSettings:
    column: Optional[str] = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    lowercase: bool = True
    field: str = "--text-column"  # where the column was named, for an error about it


def text_settings(spec: DataSpec, column: Optional[str], vocab_size: Optional[int]) -> TextSettings:
    """The text column and vocabulary: the flags, else the spec's text section (format text)."""
    section = getattr(spec, "text", None)
    size = vocab_size or getattr(section, "vocab_size", None) or DEFAULT_VOCAB_SIZE
    field = "--text-column" if column else "spec.data.text.column"
    return TextSettings(column or getattr(section, "column", None), int(size), bool(getattr(section, "lowercase", True)), field)


def table_from_scan(scan: TableScan, spec: DataSpec, *, streamed: bool, text: TextSettings = TextSettings(),
                    source: Optional[str] = None) -> dict[str, Any]:
    from .inspect_data import table_report

    source = source or spec.source
    task = scan.task(spec.task)
    text_column = text.column
    if text_column is not None and text_column not in scan.columns:
        raise DataError(text.field, f"column {text_column!r} not found in {source} "
                        f"(columns: {', '.join(scan.columns[:20])})")
    extra: list[dict[str, str]] = []
    splits: Optional[dict[str, Any]] = None
    if spec.format.value == "sequence":  # windows, cut per series in time: not rows
        extra.append(warning("split", "spec.data.sequence", "split sizes of a sequence job count windows, "
                             "which kiln inspect does not cut; the figures here are rows"))
    else:
        try:
            splits = split_rows(scan, spec, streamed=streamed)
        except DataError as exc:
            extra.append(warning("split", exc.field, exc.message))
    assert scan.sample is not None
    report = table_report(scan.sample, target=scan.target, task=task, exact=scan.exact(task), source=source,
                          splits=splits or {}, sampling=scan.sampling(), skip=(text_column,) if text_column else ())
    report["impute"] = spec.preprocessing.impute.value
    if text_column is not None:
        codes, note = text_split_codes(scan, spec, task, streamed=streamed)
        used = used_rows(scan.sample, scan.target, spec.preprocessing.impute)
        report["kind"] = "text"
        report["text"] = text_report(scan.sample[text_column][used], codes, column=text_column,
                                     vocab_size=text.vocab_size, split_note=note, lowercase=text.lowercase)
        if (found := coverage_warning(report["text"])) is not None:
            extra.append(found)
    report["warnings"].extend(extra)
    return report


def used_rows(frame: pd.DataFrame, target: str, impute: Impute) -> np.ndarray:
    """The rows the trainer keeps: a target present and, under impute drop, every feature present."""
    keep = frame[target].notna().to_numpy()
    if impute == Impute.drop:
        keep &= frame.drop(columns=[target]).notna().all(axis=1).to_numpy()
    return keep


def text_split_codes(scan: TableScan, spec: DataSpec, task: str, *, streamed: bool) -> tuple[np.ndarray, str]:
    """Each used sample row's split: the trainer's own when every row was read (or the row hash of a
    streamed job), else split.py's shuffle applied to the sample."""
    assert scan.sample is not None
    used = used_rows(scan.sample, scan.target, spec.preprocessing.impute)
    if streamed:
        return scan.sample_codes[used], "the trainer's split (row hash)"
    labels = scan.sample[scan.target][used]
    y = encode_labels(labels)[0] if task == "classification" else None
    split = spec.split
    codes = np.zeros(int(used.sum()), dtype=np.int8)
    _, val, test = split_indices(len(codes), split.validation, split.test, split.seed, y)
    codes[val], codes[test] = 1, 2
    return codes, ("split.py's shuffle of the sampled rows" if scan.sampled else "the trainer's split")


def in_memory_set_report(spec: DataSpec, *, sample_rows: int) -> dict[str, Any]:
    """builtin:* and synthetic:* sets, through the trainer's loaders, as a table."""
    from .data.sources import load_builtin, load_synthetic

    source, rows = spec.source, None
    if source.startswith("builtin:"):
        raw = load_builtin(source.removeprefix("builtin:"), as_image=False)
    else:
        syn = spec.synthetic
        rows = syn.samples
        if syn.samples * syn.features > MAX_SYNTHETIC_VALUES:
            smaller = syn.model_copy(update={"samples": max(10, MAX_SYNTHETIC_VALUES // syn.features)})
            spec = spec.model_copy(update={"synthetic": smaller})
        raw = load_synthetic(spec)
    if spec.task != Task.auto and spec.task.value != raw.task:
        raise DataError("spec.data.task", f"{source} is a {raw.task} data set, but task is {spec.task.value}")
    frame = pd.DataFrame(raw.x, columns=raw.feature_names or [f"f{i}" for i in range(raw.x.shape[1])])
    y = raw.y if raw.y.ndim == 1 else raw.y[:, 0]
    frame[BUILTIN_TARGET] = np.asarray(raw.class_names)[y] if raw.task == "classification" else y
    table_spec = spec.model_copy(update={"target": BUILTIN_TARGET, "task": Task(raw.task)})
    scan = scan_frames(iter([frame]), table_spec, streamed=False, source=source, sample_rows=sample_rows)
    report = table_from_scan(scan, table_spec, streamed=False)
    if rows is not None and rows != scan.rows:
        split = spec.split
        sizes = split_sizes(rows, split.validation, split.test)
        report["splits"].update(train=sizes[0], validation=sizes[1], test=sizes[2])
        report["rows"] = report["rows_used"] = rows
        report["sampling"] = {"sampled": True, "rows_analysed": scan.rows, "rows_total": rows,
                              "note": f"every figure but the split sizes from {scan.rows:,} rows generated with the "
                                      f"same settings (the full {rows:,} x {spec.synthetic.features} set is not built)"}
    return report


def json_safe(value: Any) -> Any:
    """The report with NaN and infinities as null: strict JSON readers refuse them."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_outputs(report: dict[str, Any], output: str) -> tuple[str, str]:
    from .inspect_plot import plot_report

    os.makedirs(output, exist_ok=True)
    json_path, png_path = os.path.join(output, "inspect.json"), os.path.join(output, "inspect.png")
    with open(json_path, "w") as handle:
        json.dump(json_safe(report), handle, indent=2, default=str, allow_nan=False)
    plot_report(report, png_path)
    return json_path, png_path


def inspect_cli(file: str, output: Optional[str] = None, *, sample_rows: Optional[int] = None,
                sample_images: Optional[int] = None, text_column: Optional[str] = None,
                vocab_size: Optional[int] = None, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Entry point of `kiln inspect` (None: the default caps, stdout and stderr)."""
    out, err = out or sys.stdout, err or sys.stderr
    sample_rows = SAMPLE_ROWS if sample_rows is None else sample_rows
    sample_images = SAMPLE_IMAGES if sample_images is None else sample_images
    try:
        if sample_rows < 1 or sample_images < 1 or (vocab_size is not None and vocab_size < 1):
            raise ValueError("--sample-rows, --sample-images and --vocab-size must be at least 1")
        job = load_job(file)
        report = inspect_job(job, pvc_root=pvc_root_from(os.environ), sample_rows=sample_rows,
                             sample_images=sample_images, text_column=text_column, vocab_size=vocab_size)
    except (SpecError, ValueError) as exc:
        err.write(f"kiln: {exc}\n")
        return EXIT_INVALID
    out.write(render_report(report))
    out.flush()  # before the closing line on stderr, so that a terminal shows them in order
    if output:
        try:
            paths = write_outputs(report, output)
        except OSError as exc:
            err.write(f"kiln: --output {output}: cannot write the report: {exc}\n")
            return EXIT_INVALID
        err.write(f"kiln: wrote {paths[0]} and {paths[1]}\n")
    return EXIT_OK
