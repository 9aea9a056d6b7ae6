"""The driver's side of streamed data: whether a job streams, its plan, and Ray Train's datasets.

The plan (split sizes, classes, preprocessing statistics) is computed once and kept beside the
checkpoints as `stream_plan.json`; a restarted driver with the same data settings reuses it, so
the statistics a resumed model was trained with never change, even if files were added since
(the split itself is a pure function of the seed and each row's or file's identity).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from kiln_api.spec import DataSpec

from .checkpoint_io import Storage
from .data.errors import DataError
from .data.hash_split import TRAIN, VALIDATION
from .data.sources import infer_format
from .data.stream_pipelines import StreamSource, open_source, source_bytes
from .data.stream_plan import MAX_PLAN_BYTES, PLAN_FILE, STREAM, StreamPlan, choose_loading, data_key, is_file_source
from .storage import exists, is_dir, resolve_location

log = logging.getLogger("kiln_trainer.driver")
SHARDED_SPLITS = (TRAIN, VALIDATION)  # the test split is read whole by rank 0


def streaming_source(spec: DataSpec, pvc_root: str) -> Optional[StreamSource]:
    """The job's stream source when its data streams (data.loading and the source's size), else None."""
    if not is_file_source(spec.source) or spec.loading.value == "memory" or spec.format.value in ("sequence", "text"):
        return None  # windows and tokenizers need whole splits in memory (stream is refused for them)
    location = resolve_location(spec.source, pvc_root)
    try:
        if not exists(location):
            return None  # the in-memory path reports the missing source with its usual message
        source = open_source(spec, location, infer_format(spec.format, location, is_dir(location)))
        size = source_bytes(source.fs, source.root)
    except (ImportError, OSError) as exc:
        raise DataError("spec.data.source", f"{spec.source}: cannot reach {location}: {exc}") from exc
    return source if choose_loading(spec, size) == STREAM else None


def load_or_build_plan(source: StreamSource, checkpoint_dir: Optional[str]) -> tuple[StreamPlan, dict[str, Any]]:
    """The stored plan when it was made from the same data settings, else a new one (stored)."""
    storage = Storage(checkpoint_dir) if checkpoint_dir else None
    stored = _read_plan(storage)
    if stored is not None and stored.data_key == data_key(source.spec):
        log.info("streaming with the statistics stored in %s", PLAN_FILE)
        return stored, source.datasets(stored)
    plan, datasets = source.build()
    if storage is not None:
        storage.write_atomic(PLAN_FILE, plan.to_json().encode())
    return plan, datasets


def _read_plan(storage: Optional[Storage]) -> Optional[StreamPlan]:
    if storage is None or not storage.exists(PLAN_FILE):
        return None
    data = storage.read(storage.join(PLAN_FILE))
    try:
        return StreamPlan.from_json(data[:MAX_PLAN_BYTES + 1].decode())
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        log.warning("ignoring an unreadable %s: %s", PLAN_FILE, exc)
        return None


def every_row_data_config() -> Any:
    """Ray Train's DataConfig, but shards that keep every row: the default splits a stream into
    equal shards by dropping the remainder, which would skip rows every epoch."""
    from ray.train import DataConfig

    class EveryRowDataConfig(DataConfig):
        def configure(self, datasets: dict[str, Any], world_size: int, worker_handles: Any, worker_node_ids: Any,
                      **kwargs: Any) -> list[dict[str, Any]]:
            output: list[dict[str, Any]] = [{} for _ in range(world_size)]
            for name, dataset in datasets.items():
                dataset = dataset.copy(dataset)
                dataset.context.execution_options = self._resolve_execution_options(name)
                if name in SHARDED_SPLITS:
                    for rank, shard in enumerate(dataset.streaming_split(world_size, equal=False)):
                        output[rank][name] = shard
                else:
                    for rank in range(world_size):
                        output[rank][name] = dataset.iterator()
            return output

    return EveryRowDataConfig(datasets_to_split=list(SHARDED_SPLITS))
