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
from .job_checks import BUILTIN_METRICS_CEL, METRICS_MESSAGE, builtin_metrics
from .k8s_syntax import (
    CONTROL_CHARACTERS,
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

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
QUANTITY_MAX_LENGTH = 32
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ENTRYPOINT_MAX_LENGTH = 256
METRIC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
METRIC_MAX_LENGTH = 63
# Locations (data, weights, checkpoints) end up in environment variables and mount paths.
LOCATION_MAX_LENGTH = 1024
_NOT_PATH = f"/{CONTROL_CHARACTERS}"
# One path segment of a pvc:// URL: anything but `..`, which would leave the mounted claim
# (`pvc://a/../b` is `/mnt/kiln/pvc/b`: another claim's files, or the pod's own filesystem).
_PVC_SEGMENT = rf"(\.\.[^{_NOT_PATH}]+|\.?[^.{_NOT_PATH}][^{_NOT_PATH}]*|\.)"
_PVC_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"  # a PVC name: a DNS subdomain
_S3_BUCKET = r"[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?"
_LOCAL_PATH = rf"[^:{CONTROL_CHARACTERS}]+"
# A storage location is a pvc:// or s3:// URL, or a plain path (no other scheme).
STORAGE_PATTERN = rf"^(pvc://{_PVC_CLAIM}(/{_PVC_SEGMENT}?)*|s3://{_S3_BUCKET}(/[^{CONTROL_CHARACTERS}]*)?|{_LOCAL_PATH})$"
BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
SYNTHETIC_DATASETS = ("classification", "regression")
DATA_SOURCE_PATTERN = (
    r"^(builtin:(" + "|".join(BUILTIN_DATASETS) + r")"
    r"|synthetic:(" + "|".join(SYNTHETIC_DATASETS) + r")"
    rf"|pvc://{_PVC_CLAIM}/{_PVC_SEGMENT}(/{_PVC_SEGMENT}?)*|s3://{_S3_BUCKET}/[^{CONTROL_CHARACTERS}]+|{_LOCAL_PATH})$"
)
COLUMN_MAX_LENGTH = 256
COLUMN_PATTERN = rf"^[^{CONTROL_CHARACTERS}]+$"
# Ports Ray itself listens on in Kiln's pods; the driver's metrics port must avoid them.
# (The operator refuses a subset of them too: kiln_operator.objects.RESERVED_PORTS.)
RAY_RESERVED_PORTS = {
    6379: "Ray GCS",
    8080: "Ray metrics export",
    8265: "Ray dashboard",
    10001: "Ray client server",
    52365: "Ray dashboard agent",
}
RAY_WORKER_PORTS = (10002, 19999)  # Ray's default min/max worker ports
MAX_NODE_SELECTOR_ENTRIES = 64
# Bounds of otherwise open integers: the largest a float64 holds exactly. Kubernetes stores
# int64, but Helm (the chart's templated CRD) and JSON tools read numbers as float64, where 2**63-1
# turns into 2**63.
INT_EXACT_MAX = 2**53 - 1
MAX_TOLERATIONS = 32
LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse")


class Mode(str, Enum):
    min = "min"
    max = "max"


def default_mode_for(metric: str) -> Mode:
    """`min` for losses and errors, `max` for everything else (accuracy, f1, r2...)."""
    return Mode.min if any(word in metric for word in LOWER_IS_BETTER) else Mode.max


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
    cpus_per_worker: float = Field(1.0, gt=0, le=512, description="CPU cores requested per worker pod, shared by its training workers.")
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

    cpus: float = Field(1.0, gt=0, le=512, description="CPU cores requested for the head pod.")
    memory: str = Field("2Gi", max_length=QUANTITY_MAX_LENGTH, pattern=QUANTITY_PATTERN, description="Memory requested (and limited) for the head pod.")


# --------------------------------------------------------------------------- model


class Architecture(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    resnet18 = "resnet18"
    resnet34 = "resnet34"
    resnet50 = "resnet50"


class Activation(str, Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    gelu = "gelu"
    silu = "silu"
    tanh = "tanh"
    sigmoid = "sigmoid"


class PretrainedSpec(ApiModel):
    """Transfer learning: start from saved weights instead of a random initialisation."""

    path: str = Field(..., min_length=1, max_length=LOCATION_MAX_LENGTH, pattern=STORAGE_PATTERN, description="State dict to load: a local/PVC path (`pvc://claim/path`) or `s3://bucket/key`. The classification head is replaced to fit the task.")
    freeze_backbone: bool = Field(False, description="Train only the new head; every other parameter keeps its loaded value.")


class ModelSpec(ApiModel):
    """A built-in model. Exclusive with `entrypoint`."""

    architecture: Architecture = Field(Architecture.mlp, description="mlp for tabular data; cnn or resnet18/34/50 (torchvision, no weight download) for images.")
    hidden_units: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [128, 64], max_length=32, description="Width of each hidden layer (mlp) or channels of each conv block (cnn).")
    activation: Activation = Field(Activation.relu, description="Non-linearity between layers.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability after each hidden layer (0 disables it).")
    batch_norm: bool = Field(False, description="Batch normalisation after each hidden layer.")
    pretrained: Optional[PretrainedSpec] = Field(None, description="Start from saved weights (transfer learning).")


# --------------------------------------------------------------------------- data


class DataFormat(str, Enum):
    auto = "auto"
    csv = "csv"
    parquet = "parquet"
    imagefolder = "imagefolder"


class Task(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


class SplitSpec(ApiModel):
    """Seeded train/validation/test split; the fractions must sum to 1."""

    train: float = Field(0.70, gt=0.0, le=1.0, description="Fraction of rows used for training.")
    validation: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction used for validation (early stopping and checkpoint ranking).")
    test: float = Field(0.15, ge=0.0, lt=1.0, description="Fraction held out and evaluated once on the final model.")
    seed: int = Field(0, ge=0, le=INT_EXACT_MAX, description="Seed of the shuffle before splitting, so every worker and every resume sees the same split.")

    cross_field_rules = (
        CrossFieldRule(
            cel="self.train + self.validation + self.test > 0.999999 && self.train + self.validation + self.test < 1.000001",
            message="train + validation + test must sum to 1",
            check=lambda s: abs(s.train + s.validation + s.test - 1.0) < 1e-6,
        ),
    )


class Normalize(str, Enum):
    standard = "standard"
    minmax = "minmax"
    none = "none"


class Impute(str, Enum):
    mean = "mean"
    median = "median"
    drop = "drop"
    none = "none"


class PreprocessingSpec(ApiModel):
    """Feature preprocessing, fitted on the training split only."""

    normalize: Normalize = Field(Normalize.standard, description="Scale features: standard (zero mean, unit variance), minmax (0..1) or none.")
    impute: Impute = Field(Impute.mean, description="Missing values: replace with the training mean or median, drop the row, or none (fail if any are missing).")


class AugmentationSpec(ApiModel):
    """Random augmentation of the training split only (validation and test are never augmented)."""

    horizontal_flip: bool = Field(False, description="Images: flip left-right with probability 0.5.")
    random_crop: int = Field(0, ge=0, le=64, description="Images: pad by this many pixels and crop back at a random offset (0 disables).")
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="Images: rotate by a random angle in [-rotation, rotation] degrees.")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="Images: random brightness/contrast change of up to this fraction.")
    gaussian_noise: float = Field(0.0, ge=0.0, le=10.0, description="Images and tables: add noise with this standard deviation (after normalisation).")


class DataPlacement(str, Enum):
    auto = "auto"
    device = "device"
    host = "host"


class DataLoading(str, Enum):
    auto = "auto"
    memory = "memory"
    stream = "stream"


class StreamSpec(ApiModel):
    """How file sources are streamed with Ray Data (data.loading: stream, or auto above the threshold)."""

    threshold_mib: int = Field(
        256, ge=0, le=2**53 - 1, alias="thresholdMiB",
        description="loading auto: file sources (csv, parquet, imagefolder) larger than this many MiB on disk are "
        "streamed; smaller ones, and builtin and synthetic sets, are loaded into memory.",
    )
    shuffle_buffer_rows: int = Field(
        2048, ge=0, le=10_000_000,
        description="Each worker shuffles its stream in a buffer of this many rows (0: no local shuffle), on top "
        "of a new file order every epoch. The buffer costs its rows in memory; it is not a global shuffle.",
    )
    prefetch_batches: int = Field(2, ge=0, le=64, description="Batches each worker reads ahead of the one it trains on.")


class SyntheticSpec(ApiModel):
    """Size of a `synthetic:*` data set (generated deterministically from `split.seed`)."""

    samples: int = Field(2000, ge=10, le=10_000_000, description="Rows to generate.")
    features: int = Field(20, ge=1, le=10_000, description="Feature columns to generate.")
    classes: int = Field(2, ge=2, le=1000, description="Classes (synthetic:classification only).")
    noise: float = Field(0.1, ge=0.0, le=100.0, description="Label noise: flipped fraction (classification) or noise std (regression).")


class DataSpec(ApiModel):
    """Where the data comes from and how it is split, preprocessed and augmented."""

    source: str = Field("builtin:digits", max_length=LOCATION_MAX_LENGTH, pattern=DATA_SOURCE_PATTERN, description="builtin:digits|iris|wine|breast_cancer (shipped with scikit-learn), synthetic:classification|regression, a file or directory path, pvc://claim/path or s3://bucket/key.")
    format: DataFormat = Field(DataFormat.auto, description="auto infers csv/parquet from the file extension and imagefolder from a directory.")
    target: str = Field("target", min_length=1, max_length=COLUMN_MAX_LENGTH, pattern=COLUMN_PATTERN, description="Column holding the label (csv/parquet).")
    task: Task = Field(Task.auto, description="auto: classification for integer/string targets, regression for float targets.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Train/validation/test fractions and their seed.")
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec, description="Scaling and imputation, fitted on the training split.")
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec, description="Random augmentation of the training split.")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="Size of a synthetic data set; ignored for other sources.")
    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to image_size x image_size (imagefolder).")
    placement: DataPlacement = Field(
        DataPlacement.auto,
        description="Where each worker keeps the training (and validation) split while it trains. device: on the "
        "model's device (GPU memory; on CPU, where the data already is): batches are shuffled and cut there, nothing "
        "is copied per step. host: in host memory; on a GPU each batch is copied on a side stream while the previous "
        "one computes. auto: device when both splits take at most deviceMemoryFraction of the device's free memory "
        "(always on CPU), host otherwise. The choice is reported in the data summary and in status.progress.dataPlacement.",
    )
    loading: DataLoading = Field(
        DataLoading.auto,
        description="memory: every worker loads its split into memory (builtin, synthetic and small files). stream: "
        "Ray Data reads file sources shard by shard, each worker iterating only its share, images kept as uint8 until "
        "the device, so memory is bounded by the prefetch window. auto: stream file sources above "
        "stream.thresholdMiB. The choice is reported in the data summary and status.progress.dataPlacement.",
    )
    stream: StreamSpec = Field(default_factory=StreamSpec, description="Streaming settings (file sources only).")
    device_memory_fraction: float = Field(
        0.5, gt=0.0, le=1.0,
        description="placement auto: the largest share of the device's free memory (measured after the model is "
        "placed) that the training and validation splits may take to be kept on the device; the rest is left for "
        "activations, gradients and optimizer state.",
    )

    cross_field_rules = (
        CrossFieldRule(
            cel="!has(self.loading) || self.loading != 'stream' || !has(self.source) "
            "|| !(self.source.startsWith('builtin:') || self.source.startsWith('synthetic:'))",
            message="stream reads files (csv, parquet, imagefolder); builtin and synthetic sets are loaded into memory",
            field_path=".loading",
            check=lambda d: d.loading != DataLoading.stream or not d.source.startswith(("builtin:", "synthetic:")),
        ),
        CrossFieldRule(
            cel="!has(self.loading) || self.loading != 'stream' || !has(self.preprocessing) "
            "|| !has(self.preprocessing.impute) || self.preprocessing.impute != 'median'",
            message="median imputation needs whole columns in memory; with loading stream use mean or drop",
            field_path=".preprocessing.impute",
            check=lambda d: d.loading != DataLoading.stream or d.preprocessing.impute != Impute.median,
        ),
    )


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
    ) + SEARCH_RULES

    @property
    def effective_model(self) -> ModelSpec:
        return self.model or ModelSpec()
