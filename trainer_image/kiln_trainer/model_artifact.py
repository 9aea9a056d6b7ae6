"""model.pt: a self-describing trained model that loads without the training data and without pickle.

The file is a `torch.save` of a plain dict: `model` (the state dict, under the key
models.load_pretrained already looks for) and `kiln_model` (a uint8 tensor holding UTF-8 JSON: the
architecture, input shape, output size, task, class names, target scaling and the `inference`
recipe of data/inference.py). It is read with `torch.load(weights_only=True)` only, so a file can
hold tensors and containers but never objects that run code; the metadata is validated (format,
version, sizes capped) before anything is built from it, and the weights must fit the architecture
it describes exactly.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from kiln_api.spec import ModelSpec
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data.errors import SpecError
from .models import KilnModel, build_model
from .storage import file_size, open_file, resolve_location

FORMAT = "kiln-model"
VERSION = 1
METADATA_KEY = "kiln_model"
WEIGHTS_KEY = "model"
MAX_METADATA_BYTES = 16 << 20  # the recipe of a table with ~100k one-hot features fits easily
MAX_MODEL_BYTES = 8 << 30
MAX_INPUT_VALUES = 1 << 26  # one sample's values: a 4096 x 4096 x 4 image
MAX_OUTPUTS = 1 << 20
MAX_CLASSES = 1 << 16


class ArtifactError(SpecError):
    """A model file that cannot be used: missing, not a Kiln model, unsafe, damaged or from another version."""


class ModelMetadata(BaseModel):
    """What model.pt says about itself (the JSON in `kiln_model`)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["kiln-model"]
    version: int
    job: Optional[str] = Field(None, max_length=253)
    model: dict[str, Any]
    input_shape: list[int] = Field(min_length=1, max_length=4)
    input_dtype: Literal["float32", "int64"] = "float32"
    output_dim: int = Field(ge=1, le=MAX_OUTPUTS)
    task: Literal["classification", "regression"]
    class_names: list[str] = Field(default_factory=list, max_length=MAX_CLASSES)
    target_mean: float = 0.0
    target_std: float = 1.0
    inference: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input_shape")
    @classmethod
    def _sized(cls, shape: list[int]) -> list[int]:
        if any(d < 1 for d in shape) or math.prod(shape) > MAX_INPUT_VALUES:
            raise ValueError(f"{shape} is not a sample shape of at most {MAX_INPUT_VALUES} values")
        return shape

    @field_validator("target_mean", "target_std")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _one_name_per_class(self) -> ModelMetadata:
        if self.task == "classification" and len(self.class_names) != self.output_dim:
            raise ValueError(f"{len(self.class_names)} class names for {self.output_dim} outputs")
        return self

    def model_spec(self, path: str) -> ModelSpec:
        try:
            return ModelSpec.model_validate({**self.model, "pretrained": None})
        except ValidationError as exc:
            raise ArtifactError("model", f"{path}: its architecture is not valid: {_first_error(exc)}") from exc


@dataclass
class ModelArtifact:
    """A loaded model.pt: the validated metadata and the weights (on the CPU)."""

    path: str
    metadata: ModelMetadata
    state: dict[str, torch.Tensor]

    def build(self, device: torch.device | str = "cpu") -> KilnModel:
        """The network with its trained weights, in eval mode."""
        meta = self.metadata
        spec = meta.model_spec(self.path)
        sizes = (spec, tuple(meta.input_shape), meta.output_dim)
        vocab_size = _vocab_size(meta.inference, self.path)
        try:
            # First without memory (the meta device): edited sizes must not allocate a huge model
            # before the weights prove it that large.
            with torch.device("meta"):
                shapes = {k: v.shape for k, v in build_model(*sizes, vocab_size=vocab_size).state_dict().items()}
            _check_shapes(shapes, self.state, spec.architecture.value, self.path)
            model = build_model(*sizes, vocab_size=vocab_size)
            model.load_state_dict(self.state, strict=True)
        except SpecError as exc:
            raise ArtifactError("model", f"{self.path}: {exc.message}") from exc
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            detail = str(exc).strip().splitlines()
            raise ArtifactError("model", f"{self.path}: its weights do not fit the {spec.architecture.value} its metadata "
                                f"describes (damaged or edited?): {' '.join(detail[:3])[:400]}") from exc
        return model.to(device).eval()

    def example_input(self, rows: int = 2, seed: int = 0) -> torch.Tensor:
        """Inputs of the model's shape and dtype (tracing and parity checks)."""
        generator = torch.Generator().manual_seed(seed)
        shape = (rows, *self.metadata.input_shape)
        if self.metadata.input_dtype == "int64":
            # Token ids: 0 is padding, so stay above it; the recipe knows the vocabulary size.
            vocab = int(self.metadata.inference.get("vocab_size", 2))
            return torch.randint(1, max(vocab, 2), shape, generator=generator)
        return torch.randn(shape, generator=generator)


def model_metadata(*, model_spec: ModelSpec, data: Any, job: Optional[str] = None) -> ModelMetadata:
    """The metadata of a built-in model trained on `data` (a DataBundle)."""
    x = getattr(data.train, "x", None)
    return ModelMetadata(
        format=FORMAT, version=VERSION, job=job, model=model_spec.model_dump(mode="json", by_alias=True, exclude={"pretrained"}),
        input_shape=list(data.input_shape), input_dtype="int64" if x is not None and x.dtype == torch.int64 else "float32",
        output_dim=data.output_dim, task=data.task, class_names=list(data.class_names),
        target_mean=float(data.target_mean), target_std=float(data.target_std), inference=dict(data.inference),
    )


def artifact_bytes(state: dict[str, torch.Tensor], metadata: ModelMetadata) -> bytes:
    """model.pt's bytes: CPU tensors and the metadata as a uint8 tensor (no pickled objects)."""
    blob = json.dumps(metadata.model_dump(mode="json"), sort_keys=True).encode()
    if len(blob) > MAX_METADATA_BYTES:
        raise ValueError(f"model metadata of {len(blob)} bytes exceeds {MAX_METADATA_BYTES}")
    payload = {
        METADATA_KEY: torch.frombuffer(bytearray(blob), dtype=torch.uint8),
        WEIGHTS_KEY: {k: v.detach().to("cpu").contiguous() for k, v in state.items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def read_artifact(path: str, pvc_root: str = PVC_MOUNT_ROOT) -> ModelArtifact:
    """Load and validate a model.pt written by `artifact_bytes` from a path, pvc:// (under
    `pvc_root`) or an object store's URL (s3://, through fsspec); every failure is an ArtifactError."""
    location = resolve_location(path, pvc_root)
    try:
        size = file_size(location)
    except (ImportError, OSError) as exc:  # s3:// without s3fs, no credentials, access denied
        raise ArtifactError("model", f"{path}: cannot reach it: {exc}") from None
    if size is None:
        raise ArtifactError("model", f"{path}: no such file")
    if size > MAX_MODEL_BYTES:
        raise ArtifactError("model", f"{path}: {size} bytes is larger than a model file may be ({MAX_MODEL_BYTES})")
    try:
        with open_file(location, "rb") as handle:  # seekable: torch reads the archive's records where they lie
            loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types; all mean "not a safe model file"
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ArtifactError("model", f"{path}: not a Kiln model file (it cannot be read as plain tensors: {reason})") from exc
    return parse_artifact(loaded, path)


def parse_artifact(loaded: object, path: str) -> ModelArtifact:
    """Validate what torch.load gave for `path`."""
    if not isinstance(loaded, dict) or METADATA_KEY not in loaded:
        if _is_state_dict(loaded):
            raise ArtifactError("model", f"{path}: a bare state dict without Kiln's metadata: it was saved by an older "
                                "Kiln (or by custom code through kiln_trainer.save_model); re-run training with a "
                                "built-in model to get a model.pt that kiln predict and kiln export can use")
        raise ArtifactError("model", f"{path}: not a Kiln model file (no {METADATA_KEY!r} metadata)")
    metadata = _parse_metadata(loaded[METADATA_KEY], path)
    state = loaded.get(WEIGHTS_KEY)
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                            for k, v in state.items()):
        raise ArtifactError("model", f"{path}: its {WEIGHTS_KEY!r} entry is not a mapping of names to tensors")
    return ModelArtifact(path=path, metadata=metadata, state=state)


def _parse_metadata(blob: object, path: str) -> ModelMetadata:
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise ArtifactError("model", f"{path}: its {METADATA_KEY!r} entry is not a byte string")
    if blob.numel() > MAX_METADATA_BYTES:
        raise ArtifactError("model", f"{path}: {blob.numel()} bytes of metadata is more than {MAX_METADATA_BYTES}")
    try:
        document = json.loads(bytes(blob.numpy().tobytes()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError("model", f"{path}: its metadata is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ArtifactError("model", f"{path}: not a Kiln model file (metadata format is not {FORMAT!r})")
    version = document.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise ArtifactError("model", f"{path}: model format version {version!r}"
                            + (f" was written by a newer Kiln; this one reads version {VERSION}" if newer
                               else f" is not one this Kiln reads (version {VERSION})"))
    try:
        return ModelMetadata.model_validate(document)
    except ValidationError as exc:
        raise ArtifactError("model", f"{path}: invalid metadata: {_first_error(exc)}") from exc


def _check_shapes(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], architecture: str, path: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} is {tuple(state[k].shape)}, not {tuple(v)}" for k, v in expected.items()
             if k in state and state[k].shape != v]
    if missing or unexpected or wrong:
        shown = "; ".join([f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]] + wrong[:2])
        raise ArtifactError("model", f"{path}: its weights do not fit the {architecture} its metadata describes "
                            f"(damaged or edited?): {shown}")


def _vocab_size(inference: dict[str, Any], path: str) -> int:
    # Text models embed token ids: the vocabulary the recipe (data/text.py) recorded sizes them.
    vocab = inference.get("vocab_size", 0)
    if not isinstance(vocab, int) or not 0 <= vocab <= MAX_OUTPUTS * 16:
        raise ArtifactError("model", f"{path}: inference.vocab_size {vocab!r} is not a vocabulary size")
    return vocab


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" + (f" ({len(exc.errors())} errors)" if len(exc.errors()) > 1 else "")
