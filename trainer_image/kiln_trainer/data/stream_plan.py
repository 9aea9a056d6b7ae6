"""Whether a job streams its data, and the plan a streamed run's workers share.

The plan is small and JSON-only (never pickled): the driver computes it in one pass over the data
(stream_pipelines.py), sends it to every worker, and saves it beside the checkpoints, so a restart
keeps the same split (a pure function of the seed) and the same preprocessing statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
from kiln_api.spec import DataFormat, DataLoading, DataSpec

from .preprocessing import Preprocessor

MEMORY = "memory"
STREAM = "stream"
PLAN_FILE = "stream_plan.json"
MAX_PLAN_BYTES = 16 << 20


def is_file_source(source: str) -> bool:
    return not source.startswith(("builtin:", "synthetic:"))


def choose_loading(spec: DataSpec, source_bytes: Optional[int]) -> str:
    """`memory` or `stream`: builtin and synthetic sets are always in memory; files stream when asked,
    or under auto when larger than stream.thresholdMiB (size unknown: memory, as before)."""
    if not is_file_source(spec.source) or spec.loading == DataLoading.memory:
        return MEMORY
    if spec.format in (DataFormat.sequence, DataFormat.text):  # windows and tokenizers need whole splits
        return MEMORY
    if spec.loading == DataLoading.stream:
        return STREAM
    if source_bytes is None:
        return MEMORY
    return STREAM if source_bytes > spec.stream.threshold_mib * (1 << 20) else MEMORY


@dataclass
class StreamPlan:
    """What every worker of a streamed run needs besides its shard."""

    kind: str  # table | image
    source: str
    task: str
    class_names: list[str]
    feature_names: list[str]
    input_shape: list[int]
    output_dim: int
    rows: dict[str, int]
    # Tables are encoded, imputed and scaled in Ray Data's tasks with these; images are scaled per
    # channel on the device.
    fill: list[float]
    center: list[float]
    scale: list[float]
    target_mean: float = 0.0
    target_std: float = 1.0
    missing_values: int = 0
    table_schema: dict[str, Any] = field(default_factory=dict)
    data_key: str = ""  # what the statistics were computed from (a digest of spec.data)

    def preprocessor(self) -> Preprocessor:
        return Preprocessor(fill=np.asarray(self.fill, dtype=np.float32), center=np.asarray(self.center, dtype=np.float32),
                            scale=np.asarray(self.scale, dtype=np.float32))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StreamPlan:
        if len(text) > MAX_PLAN_BYTES:
            raise ValueError(f"a stream plan of {len(text)} bytes is larger than {MAX_PLAN_BYTES}")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a stream plan must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def data_key(spec: DataSpec) -> str:
    """A digest of everything in spec.data that the plan depends on."""
    relevant = spec.model_dump(mode="json", exclude={"placement", "device_memory_fraction", "augmentation"})
    relevant["stream"] = {}  # buffer sizes do not change statistics
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
