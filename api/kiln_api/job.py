"""The TrainingJob resource: apiVersion, kind, metadata, spec and status."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, field_validator

from .base import GROUP_VERSION, KIND, ApiModel
from .k8s_syntax import ANNOTATIONS_MAX_BYTES, AnnotationKey, DnsLabel, LabelKey, LabelValue, annotations_size
from .spec import TrainingJobSpec
from .status import TrainingJobStatus

# Child pods are named `<job>-worker-<i>` and carry the job name as a label value,
# both limited to 63 characters, so job names are kept well under that.
MAX_NAME_LENGTH = 40
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(ApiModel):
    """The parts of Kubernetes object metadata Kiln reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_LABEL_PATTERN, description="Job name: a DNS label of at most 40 characters (pod names derive from it).")
    namespace: Optional[DnsLabel] = Field(None, description="Namespace of the job.")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="Labels.")
    annotations: dict[AnnotationKey, str] = Field(default_factory=dict, description="Annotations (at most 256 KiB in all).")
    uid: Optional[str] = Field(None, description="Set by the API server.")
    generation: Optional[int] = Field(None, description="Set by the API server.")

    @field_validator("annotations")
    @classmethod
    def _annotations_fit(cls, annotations: dict[str, str]) -> dict[str, str]:
        size = annotations_size(annotations)
        if size > ANNOTATIONS_MAX_BYTES:
            raise ValueError(f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes (has {size})")
        return annotations


class TrainingJob(ApiModel):
    """A distributed PyTorch training run on a Ray cluster that Kiln creates and manages."""

    api_version: Literal["kiln.dev/v1alpha1"] = Field(GROUP_VERSION, description="kiln.dev/v1alpha1")
    kind: Literal["TrainingJob"] = Field(KIND, description="TrainingJob")
    metadata: ObjectMeta
    spec: TrainingJobSpec = Field(default_factory=TrainingJobSpec)
    status: Optional[TrainingJobStatus] = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> TrainingJob:
        return cls.model_validate(manifest)
