"""The TrainingJob spec: what a user asks for.

Every field has a description (it becomes `kubectl explain` text) and a default a
first-time user can live with. Cross-field rules are declared once as
`CrossFieldRule`s and enforced both here and, as CEL, by the API server.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

from pydantic import Field

from .base import ApiModel, CrossFieldRule
from .cpu import CpuQuantity
from .job_checks import BUILTIN_METRICS_CEL, METRICS_MESSAGE, builtin_metrics
from .k8s_syntax import (
    DNS_SUBDOMAIN_MAX_LENGTH,
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_NAME_LENGTH_RULE,
    LABEL_KEY_PREFIX_RULE,
    LABEL_MAP_KEYS_RULE,
    Image,
    LabelKey,
    LabelValue,
    OptionalLabelKey,
)
from .search import SPEC_RULES as SEARCH_RULES
from .search import SearchSpec
from .spec_common import _S3_BUCKET as _S3_BUCKET
from .spec_common import BUILTIN_DATASETS as BUILTIN_DATASETS
from .spec_common import COLUMN_MAX_LENGTH as COLUMN_MAX_LENGTH
from .spec_common import COLUMN_PATTERN as COLUMN_PATTERN
from .spec_common import DATA_SOURCE_PATTERN as DATA_SOURCE_PATTERN
from .spec_common import ENTRYPOINT_MAX_LENGTH as ENTRYPOINT_MAX_LENGTH
from .spec_common import ENTRYPOINT_PATTERN as ENTRYPOINT_PATTERN
from .spec_common import INT_EXACT_MAX as INT_EXACT_MAX
from .spec_common import LOCATION_MAX_LENGTH as LOCATION_MAX_LENGTH
from .spec_common import LOWER_IS_BETTER as LOWER_IS_BETTER
from .spec_common import MAX_NODE_SELECTOR_ENTRIES as MAX_NODE_SELECTOR_ENTRIES
from .spec_common import MAX_TOLERATIONS as MAX_TOLERATIONS
from .spec_common import METRIC_MAX_LENGTH as METRIC_MAX_LENGTH
from .spec_common import METRIC_PATTERN as METRIC_PATTERN
from .spec_common import QUANTITY_MAX_LENGTH as QUANTITY_MAX_LENGTH
from .spec_common import QUANTITY_PATTERN as QUANTITY_PATTERN
from .spec_common import RAY_RESERVED_PORTS as RAY_RESERVED_PORTS
from .spec_common import RAY_WORKER_PORTS as RAY_WORKER_PORTS
from .spec_common import STORAGE_PATTERN as STORAGE_PATTERN
from .spec_common import SYNTHETIC_DATASETS as SYNTHETIC_DATASETS
from .spec_common import Mode as Mode
from .spec_common import default_mode_for as default_mode_for
from .spec_data import SEQUENCE_DATA_RULES as SEQUENCE_DATA_RULES
from .spec_data import AugmentationSpec as AugmentationSpec
from .spec_data import DataFormat as DataFormat
from .spec_data import DataLoading as DataLoading
from .spec_data import DataPlacement as DataPlacement
from .spec_data import DataSpec as DataSpec
from .spec_data import Impute as Impute
from .spec_data import Normalize as Normalize
from .spec_data import PreprocessingSpec as PreprocessingSpec
from .spec_data import SequenceSpec as SequenceSpec
from .spec_data import SplitSpec as SplitSpec
from .spec_data import StreamSpec as StreamSpec
from .spec_data import SyntheticSpec as SyntheticSpec
from .spec_data import Task as Task
from .spec_data import TextSpec as TextSpec
from .spec_data import Tokenizer as Tokenizer
from .spec_data import cel_is_sequence_data, cel_is_text_data
from .spec_data import is_sequence_data as is_sequence_data
from .spec_data import is_text_data as is_text_data
from .spec_model import IMAGE_ARCHITECTURES as IMAGE_ARCHITECTURES
from .spec_model import SEQUENCE_ARCHITECTURES as SEQUENCE_ARCHITECTURES
from .spec_model import Activation as Activation
from .spec_model import Architecture as Architecture
from .spec_model import ModelSpec as ModelSpec
from .spec_model import Pooling as Pooling
from .spec_model import PositionalEncoding as PositionalEncoding
from .spec_model import PretrainedSpec as PretrainedSpec

# --------------------------------------------------------------------------- workers


class TolerationOperator(str, Enum):
    exists = "Exists"
    equal = "Equal"


class TaintEffect(str, Enum):
    no_schedule = "NoSchedule"
    prefer_no_schedule = "PreferNoSchedule"
    no_execute = "NoExecute"


class Toleration(ApiModel):
    """A Kubernetes toleration, copied onto every pod of the job."""

    key: Optional[OptionalLabelKey] = Field(
        None,
        description="Taint key the toleration applies to (a label key); empty with operator Exists matches all taints.",
        json_schema_extra={"x-kubernetes-validations": [LABEL_KEY_PREFIX_RULE]},
    )
    operator: TolerationOperator = Field(TolerationOperator.equal, description="Exists or Equal.")
    value: Optional[LabelValue] = Field(None, description="Taint value (a label value) to match when operator is Equal; must be empty with Exists.")
    effect: Optional[TaintEffect] = Field(None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: Optional[int] = Field(None, ge=0, le=INT_EXACT_MAX, description="For NoExecute: how long the pod stays bound after the taint appears.")

    # The API server's own rules for a pod's tolerations (ValidateTolerations).
    cross_field_rules = (
        CrossFieldRule(
            cel="(has(self.key) && self.key != '') || self.operator == 'Exists'",
            message="operator must be Exists when key is empty (which matches all taints)",
            field_path=".operator",
            check=lambda t: bool(t.key) or t.operator == TolerationOperator.exists,
        ),
        CrossFieldRule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty when operator is Exists",
            field_path=".value",
            check=lambda t: t.operator != TolerationOperator.exists or not t.value,
        ),
        CrossFieldRule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="effect must be NoExecute when tolerationSeconds is set",
            field_path=".tolerationSeconds",
            check=lambda t: t.toleration_seconds is None or t.effect == TaintEffect.no_execute,
        ),
    )


class WorkersSpec(ApiModel):
    """The Ray worker pods that run the data-parallel training workers (one per pod)."""

    replicas: int = Field(2, ge=1, le=1024, description="Number of worker pods (Ray worker nodes). Each runs one training worker, or one per GPU when gpusPerWorker > 0. `kiln run --workers` overrides it locally.")
    gpus_per_worker: int = Field(0, ge=0, le=16, description="GPUs per worker pod (`nvidia.com/gpu` limit). 0 trains on CPU with gloo; N > 0 runs N training workers of one GPU each in the pod (world size replicas x N), with NCCL.")
    cpus_per_worker: CpuQuantity = Field(
        1,
        description='CPU requested per worker pod, shared by its training workers: a Kubernetes quantity such as 2, "2", "1.5" or '
        '"500m" (up to 512 cores), kept as written. A fraction must be a string ("1.5" or "1500m"): YAML 1.5 is not an int-or-string.',
    )
    memory_per_worker: str = Field("2Gi", max_length=QUANTITY_MAX_LENGTH, pattern=QUANTITY_PATTERN, description="Memory requested (and limited) per worker pod, as a Kubernetes quantity such as `4Gi`.")
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_NODE_SELECTOR_ENTRIES,
        description="Node labels (label keys and values) every pod of the job must match.",
        json_schema_extra={"x-kubernetes-validations": [LABEL_MAP_KEYS_RULE]},
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_TOLERATIONS, description="Tolerations added to every pod of the job (e.g. for tainted GPU nodes).")
    priority_class_name: Optional[str] = Field(None, max_length=DNS_SUBDOMAIN_MAX_LENGTH, pattern=DNS_SUBDOMAIN_PATTERN, description="PriorityClass of every pod of the job (a DNS subdomain).")


class HeadSpec(ApiModel):
    """The Ray head pod, which runs the training driver (no training workers)."""

    cpus: CpuQuantity = Field(
        1,
        description='CPU requested for the head pod: a Kubernetes quantity such as 1, "2", "1.5" or "500m" (up to 512 cores), '
        'kept as written. A fraction must be a string ("0.5" or "500m"): YAML 0.5 is not an int-or-string.',
    )
    memory: str = Field("2Gi", max_length=QUANTITY_MAX_LENGTH, pattern=QUANTITY_PATTERN, description="Memory requested (and limited) for the head pod.")


# --------------------------------------------------------------------------- hyperparameters


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"
    rmsprop = "rmsprop"
    adagrad = "adagrad"


class ScheduleType(str, Enum):
    constant = "constant"
    step = "step"
    cosine = "cosine"
    onecycle = "onecycle"
    plateau = "plateau"


class LrScheduleSpec(ApiModel):
    """Learning-rate schedule, stepped once per epoch (onecycle: per optimizer step)."""

    type: ScheduleType = Field(ScheduleType.constant, description="constant, step (multiply by gamma every stepSize epochs), cosine (to 0 over the run), onecycle, or plateau (multiply by gamma when the validation loss stops improving for stepSize epochs).")
    warmup_epochs: int = Field(0, ge=0, le=10_000, description="Epochs of linear warm-up from 0 to learningRate before the schedule starts.")
    step_size: int = Field(10, ge=1, le=10_000, description="step: epochs between decays; plateau: epochs without improvement before a decay.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="Decay factor for step and plateau.")


class MixedPrecision(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class HyperparametersSpec(ApiModel):
    """Optimisation settings."""

    epochs: int = Field(10, ge=1, le=100_000, description="Maximum number of epochs (early stopping may end sooner).")
    batch_size: int = Field(64, ge=1, le=1_048_576, description="Global batch size, split evenly across workers.")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    optimizer: Optimizer = Field(Optimizer.adam, description="sgd, adam, adamw, rmsprop or adagrad.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum for sgd and rmsprop.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 regularisation (decoupled for adamw).")
    l1: float = Field(0.0, ge=0.0, le=1.0, description="L1 penalty coefficient added to the loss (sum of absolute weights).")
    lr_schedule: LrScheduleSpec = Field(default_factory=LrScheduleSpec, description="Learning-rate schedule.")
    gradient_clip_norm: Optional[float] = Field(None, gt=0.0, description="Clip the global gradient norm to this value.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Accumulate gradients over this many batches per optimizer step.")
    mixed_precision: MixedPrecision = Field(MixedPrecision.none, description="Autocast dtype: bf16 (CPU and GPU) or fp16 (GPU only, with a gradient scaler).")
    seed: int = Field(42, ge=0, le=INT_EXACT_MAX, description="Seed for model initialisation, shuffling and augmentation.")
    compile: bool = Field(
        False,
        description="Wrap the model in torch.compile (the first steps take longer while it compiles). Where "
        "compilation cannot work (no C++ compiler, an unsupported Python), training goes on uncompiled with a warning.",
    )

    cross_field_rules = (
        CrossFieldRule(
            cel="self.lrSchedule.warmupEpochs < self.epochs",
            message="must be smaller than epochs",
            field_path=".lrSchedule.warmupEpochs",
            check=lambda h: h.lr_schedule.warmup_epochs < h.epochs,
        ),
    )


# --------------------------------------------------------------------------- checkpoints, stopping


class CheckpointSpec(ApiModel):
    """Where and how often complete training state is saved."""

    storage: Optional[str] = Field(None, max_length=LOCATION_MAX_LENGTH, pattern=STORAGE_PATTERN, description="pvc://claim/path, s3://bucket/prefix or a local path. On a cluster it must be shared storage; when empty the operator's default is used. `kiln run` defaults to its output directory.")
    every_epochs: int = Field(1, ge=1, le=10_000, description="Save a checkpoint every this many epochs (and always at the end).")
    keep: int = Field(2, ge=1, le=1000, description="Newest checkpoints to keep; the best by `metric` is kept as well.")
    metric: str = Field("val_loss", min_length=1, max_length=METRIC_MAX_LENGTH, pattern=METRIC_PATTERN, description="Metric that ranks checkpoints (e.g. val_loss, val_accuracy).")
    mode: Optional[Mode] = Field(None, description="min or max; defaults to min for losses/errors and max otherwise.")
    resume: bool = Field(True, description="On start, resume from the newest valid checkpoint in storage.")

    @property
    def effective_mode(self) -> Mode:
        return self.mode or default_mode_for(self.metric)


class EarlyStoppingSpec(ApiModel):
    """Stop when a validation metric stops improving (PyTorch Lightning's EarlyStopping semantics)."""

    metric: str = Field("val_loss", min_length=1, max_length=METRIC_MAX_LENGTH, pattern=METRIC_PATTERN, description="Metric to monitor.")
    mode: Optional[Mode] = Field(None, description="min or max; defaults to min for losses/errors and max otherwise.")
    patience: int = Field(3, ge=0, le=100_000, description="Checks without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="An improvement must beat the best by more than this.")
    stopping_threshold: Optional[float] = Field(None, description="Stop (successfully) as soon as the metric reaches this value.")
    divergence_threshold: Optional[float] = Field(None, description="Stop (as a failure) as soon as the metric is worse than this value.")
    check_finite: bool = Field(True, description="Stop when the metric becomes NaN or infinite.")
    restore_best_weights: bool = Field(False, description="End with the best checkpoint's weights instead of the last epoch's.")

    cross_field_rules = (
        CrossFieldRule(
            cel=(
                "!has(self.stoppingThreshold) || !has(self.divergenceThreshold) || "
                "((has(self.mode) ? self.mode : "
                "(self.metric.matches('loss|error|mse|mae|rmse') ? 'min' : 'max')) == 'min'"
                " ? self.stoppingThreshold < self.divergenceThreshold"
                " : self.stoppingThreshold > self.divergenceThreshold)"
            ),
            message="stoppingThreshold must be better than divergenceThreshold for the mode (smaller for min, larger for max)",
            field_path=".stoppingThreshold",
            check=lambda e: e.stopping_threshold is None
            or e.divergence_threshold is None
            or (
                e.stopping_threshold < e.divergence_threshold
                if e.effective_mode == Mode.min
                else e.stopping_threshold > e.divergence_threshold
            ),
        ),
    )

    @property
    def effective_mode(self) -> Mode:
        return self.mode or default_mode_for(self.metric)


class FailurePolicySpec(ApiModel):
    """How many faults a job survives."""

    max_restarts: int = Field(3, ge=0, le=1000, description="Times the operator recreates the Ray cluster after the head is lost, resuming from the latest checkpoint.")
    max_worker_failures: int = Field(3, ge=0, le=1000, description="Times Ray Train restarts the worker group after a worker is lost, within one cluster.")


class MetricsSpec(ApiModel):
    """The training driver's HTTP endpoint (`/metrics` for Prometheus, `/status` for the operator)."""

    port: int = Field(8000, ge=1024, le=65535, description="Port of the driver's /metrics and /status endpoint; not one of Ray's (6379, 8080, 8265, 10001, 10002-19999, 52365).")

    cross_field_rules = (
        CrossFieldRule(
            cel=(
                f"!(self.port in [{', '.join(str(p) for p in sorted(RAY_RESERVED_PORTS))}])"
                f" && (self.port < {RAY_WORKER_PORTS[0]} || self.port > {RAY_WORKER_PORTS[1]})"
            ),
            message=(
                "must not be a port Ray listens on in the pods: "
                + ", ".join(f"{port} ({what})" for port, what in sorted(RAY_RESERVED_PORTS.items()))
                + f", {RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]} (Ray worker processes)"
            ),
            field_path=".port",
            check=lambda m: m.port not in RAY_RESERVED_PORTS and not RAY_WORKER_PORTS[0] <= m.port <= RAY_WORKER_PORTS[1],
        ),
    )


# --------------------------------------------------------------------------- evaluation

MAX_SLICE_COLUMNS = 16
# Table column names, at most MAX_SLICE_COLUMNS of them (sliceBy and excludeFromFeatures).
SliceColumns = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=COLUMN_MAX_LENGTH, pattern=COLUMN_PATTERN)]],
    Field(max_length=MAX_SLICE_COLUMNS),
]


class EvaluationSpec(ApiModel):
    """The evaluation report written after training (evaluation.json beside the model): per-class and
    averaged metrics on the test split, and the same metrics per value of the sliceBy columns."""

    slice_by: SliceColumns = Field(
        default_factory=list,
        description="Table columns (csv/parquet, data in memory) whose every value gets its own metrics on the test "
        "split: the bias check. A column may be a feature or a column listed in excludeFromFeatures. A slice is "
        "compared with the whole test split on accuracy (classification) or RMSE (regression).",
    )
    slice_tolerance: float = Field(
        0.05, ge=0.0, le=1.0,
        description="A slice is flagged when it is worse than the whole test split by more than this: accuracy lower "
        "by more than this many points (0.05 = 5 percentage points) for classification; RMSE higher by more than "
        "this fraction of the whole split's RMSE (0.05 = 5%) for regression, since RMSE has the target's units.",
    )
    exclude_from_features: SliceColumns = Field(
        default_factory=list,
        description="sliceBy columns the model must not see (a sensitive attribute, a region code): they are dropped "
        "from the features and read only for the report. Each must be listed in sliceBy.",
    )

    cross_field_rules = (
        CrossFieldRule(
            cel="!has(self.excludeFromFeatures) || self.excludeFromFeatures.all(c, has(self.sliceBy) && c in self.sliceBy)",
            message="every column of excludeFromFeatures must also be listed in sliceBy",
            field_path=".excludeFromFeatures",
            check=lambda e: all(c in e.slice_by for c in e.exclude_from_features),
        ),
        CrossFieldRule(
            cel="!has(self.sliceBy) || self.sliceBy.all(c, self.sliceBy.exists_one(d, d == c))",
            message="must not list a column twice",
            field_path=".sliceBy",
            check=lambda e: len(set(e.slice_by)) == len(e.slice_by),
        ),
    )


def _no_slices(spec: TrainingJobSpec) -> bool:
    return not spec.evaluation.slice_by


# On TrainingJobSpec: where sliceBy cannot work, known from the spec alone (the rest fails at data load).
SLICE_RULES = (
    CrossFieldRule(
        cel="!has(self.evaluation) || !has(self.evaluation.sliceBy) || size(self.evaluation.sliceBy) == 0 "
        "|| !(self.data.source.startsWith('builtin:') || self.data.source.startsWith('synthetic:') "
        "|| self.data.format == 'imagefolder')",
        message="builtin, synthetic and image-folder data have no columns to slice by; sliceBy needs a csv or parquet table",
        field_path=".evaluation.sliceBy",
        check=lambda s: _no_slices(s) or not (s.data.source.startswith(("builtin:", "synthetic:"))
                                              or s.data.format == DataFormat.imagefolder),
    ),
    CrossFieldRule(
        cel="!has(self.evaluation) || !has(self.evaluation.sliceBy) || size(self.evaluation.sliceBy) == 0 "
        "|| self.data.loading != 'stream'",
        message="slices need the test split's columns in memory: with data.loading stream the report has no slices; "
        "use loading memory (or auto below stream.thresholdMiB)",
        field_path=".evaluation.sliceBy",
        check=lambda s: _no_slices(s) or s.data.loading != DataLoading.stream,
    ),
    CrossFieldRule(
        cel="!has(self.evaluation) || !has(self.evaluation.sliceBy) || size(self.evaluation.sliceBy) == 0 "
        "|| !has(self.entrypoint)",
        message="the evaluation report is the built-in model's; custom code (entrypoint) evaluates itself",
        field_path=".evaluation.sliceBy",
        check=lambda s: _no_slices(s) or s.entrypoint is None,
    ),
)


IPV4_CIDR = r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])"
IPV6_CIDR = r"[0-9a-fA-F.]{0,40}:[0-9a-fA-F:.]{0,44}/(12[0-8]|1[01][0-9]|[1-9]?[0-9])"  # has a colon
CIDR_PATTERN = f"^({IPV4_CIDR}|{IPV6_CIDR})$"


class EgressRule(ApiModel):
    """Destinations outside the job that its pods may reach."""

    cidr: str = Field(..., max_length=49, pattern=CIDR_PATTERN, description="Destination addresses, e.g. `10.0.0.0/8` or `0.0.0.0/0` for anywhere.")
    ports: Annotated[list[Annotated[int, Field(ge=1, le=65535)]], Field(max_length=16)] = Field(
        default_factory=list, description="TCP ports allowed to that destination; empty allows every port."
    )


class NetworkSpec(ApiModel):
    """What the job's pods may reach beyond each other, DNS and (for s3:// locations) HTTPS."""

    egress: Annotated[list[EgressRule], Field(max_length=16)] = Field(
        default_factory=list,
        description="Extra egress allowed by the job's NetworkPolicy, for custom code that downloads data or reports to a service.",
    )


class PullPolicy(str, Enum):
    always = "Always"
    if_not_present = "IfNotPresent"
    never = "Never"


_CEL_ARCH = "(has(self.model) ? self.model.architecture : 'mlp')"
_SEQUENCE_ARCHS_CEL = "['" + "', '".join(SEQUENCE_ARCHITECTURES) + "']"
_IMAGE_ARCHS_CEL = "['" + "', '".join(IMAGE_ARCHITECTURES) + "']"


def _arch(s: TrainingJobSpec) -> str:
    return s.effective_model.architecture.value


# Which models fit sequence and text data (custom code, `entrypoint`, reads the data its own way).
SEQUENCE_MODEL_RULES = (
    CrossFieldRule(
        cel=f"has(self.entrypoint) || !({_CEL_ARCH} in {_SEQUENCE_ARCHS_CEL}) "
        f"|| {cel_is_sequence_data('self.data')} || {cel_is_text_data('self.data')}",
        message="lstm, gru and transformer need data.format sequence or text (or source synthetic:sequence or synthetic:text)",
        field_path=".model.architecture",
        check=lambda s: s.entrypoint is not None or _arch(s) not in SEQUENCE_ARCHITECTURES
        or is_sequence_data(s.data) or is_text_data(s.data),
    ),
    CrossFieldRule(
        cel=f"has(self.entrypoint) || !{cel_is_text_data('self.data')} || {_CEL_ARCH} in {_SEQUENCE_ARCHS_CEL}",
        message="text data (token ids) needs architecture lstm, gru or transformer",
        field_path=".model.architecture",
        check=lambda s: s.entrypoint is not None or not is_text_data(s.data) or _arch(s) in SEQUENCE_ARCHITECTURES,
    ),
    CrossFieldRule(
        cel=f"has(self.entrypoint) || !{cel_is_sequence_data('self.data')} || !({_CEL_ARCH} in {_IMAGE_ARCHS_CEL})",
        message="sequence data needs architecture lstm, gru, transformer or mlp (on the flattened window), not an image model",
        field_path=".model.architecture",
        check=lambda s: s.entrypoint is not None or not is_sequence_data(s.data) or _arch(s) not in IMAGE_ARCHITECTURES,
    ),
)


class TrainingJobSpec(ApiModel):
    """What to train, on what, with which resources."""

    image: Optional[Image] = Field(
        None,
        description="Trainer image for the head and workers (an image reference such as `registry.example.com:5000/team/trainer:1.0`); defaults to the operator's configured trainer image.",
        json_schema_extra={"x-kubernetes-validations": [IMAGE_NAME_LENGTH_RULE]},
    )
    image_pull_policy: Optional[PullPolicy] = Field(None, description="Always, IfNotPresent or Never.")
    suspend: bool = Field(False, description="true deletes the job's pods and keeps the job; false again resumes from the latest checkpoint.")
    ttl_seconds_after_finished: Optional[int] = Field(None, ge=0, le=INT_EXACT_MAX, description="Delete the job this many seconds after it succeeds or fails.")
    startup_timeout_seconds: int = Field(600, ge=1, le=86_400, description="Fail the job if its pods cannot all be scheduled and started within this time.")
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="Worker pods.")
    head: HeadSpec = Field(default_factory=HeadSpec, description="Head pod (Ray head and training driver).")
    model: Optional[ModelSpec] = Field(None, description="Built-in model to train (default: an mlp). Exclusive with entrypoint.")
    entrypoint: Optional[str] = Field(None, max_length=ENTRYPOINT_MAX_LENGTH, pattern=ENTRYPOINT_PATTERN, description="Custom training code as `package.module:function`, run on every worker with the kiln_trainer SDK. Exclusive with model.")
    data: DataSpec = Field(default_factory=DataSpec, description="Training data.")
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec, description="Optimisation settings.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing and resume.")
    early_stopping: Optional[EarlyStoppingSpec] = Field(None, description="Early stopping; absent means train for all epochs.")
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec, description="Fault tolerance.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Driver metrics/status endpoint.")
    network: Optional[NetworkSpec] = Field(
        None,
        description="Network access beyond the job's own pods. By default its NetworkPolicy allows egress only to "
        "the job's pods, the cluster DNS and, when a location is on S3, port 443.",
    )
    search: Optional[SearchSpec] = Field(None, description="Hyperparameter search: run trials of this job on Ray Tune and keep the best; absent trains once.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec,
        description="The evaluation report on the test split after training (evaluation.json and a plot beside the "
        "model, a summary in status.evaluation): per-class metrics, confusion matrix, ROC/PR-AUC or regression "
        "errors, and per-slice metrics with the slices worse than the whole flagged.",
    )

    cross_field_rules = (
        CrossFieldRule(
            cel="!has(self.entrypoint) || !has(self.model)",
            message="entrypoint and model are mutually exclusive",
            field_path=".entrypoint",
            check=lambda s: s.entrypoint is None or s.model is None,
        ),
        CrossFieldRule(
            cel="self.hyperparameters.batchSize >= self.workers.replicas * (self.workers.gpusPerWorker > 0 ? self.workers.gpusPerWorker : 1)",
            message="must be at least the number of training workers, workers.replicas x max(gpusPerWorker, 1) (the global batch is split across them)",
            field_path=".hyperparameters.batchSize",
            check=lambda s: s.hyperparameters.batch_size >= s.workers.replicas * max(s.workers.gpus_per_worker, 1),
        ),
        CrossFieldRule(
            cel=f"has(self.entrypoint) || !has(self.earlyStopping) || self.earlyStopping.metric in {BUILTIN_METRICS_CEL}",
            message=METRICS_MESSAGE,
            field_path=".earlyStopping.metric",
            check=lambda s: s.entrypoint is not None or s.early_stopping is None
            or s.early_stopping.metric in builtin_metrics(s.data),
        ),
        CrossFieldRule(
            cel=f"has(self.entrypoint) || self.checkpoint.metric in {BUILTIN_METRICS_CEL}",
            message=METRICS_MESSAGE,
            field_path=".checkpoint.metric",
            check=lambda s: s.entrypoint is not None or s.checkpoint.metric in builtin_metrics(s.data),
        ),
        CrossFieldRule(
            cel="!has(self.earlyStopping) || !self.earlyStopping.metric.startsWith('val_') || self.data.split.validation > 0.0",
            message="early stopping on a val_ metric needs a validation split > 0",
            field_path=".data.split.validation",
            check=lambda s: s.early_stopping is None
            or not s.early_stopping.metric.startswith("val_")
            or s.data.split.validation > 0.0,
        ),
    ) + SEARCH_RULES + SLICE_RULES + SEQUENCE_MODEL_RULES

    @property
    def effective_model(self) -> ModelSpec:
        return self.model or ModelSpec()
