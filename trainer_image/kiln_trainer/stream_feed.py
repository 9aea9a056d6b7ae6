"""A worker's side of streamed data (data/stream_pipelines.py builds the pipelines in the driver).

Each split is a Ray Data iterator: the training and validation splits are shards (Ray Train's
`get_dataset_shard`, split without dropping rows, so every row is seen exactly once per epoch across
workers and shards may differ by a few rows: the loop trains under DDP's `Join`), the test split is
read whole by rank 0. Batches arrive on the worker's device, `prefetch_batches` ahead; images arrive
as uint8 (N, H, W, C) and become float, augmented and normalised there, never before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from kiln_api.spec import DataSpec

from .batch_feed import augmentation_seed
from .data import DataBundle
from .data.augmentation import ChannelNormalize, batch_train_transform
from .data.inference import streamed_inference
from .data.stream_plan import StreamPlan
from .data.summary import DataSummary

STREAM = "stream"
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StreamInputs:
    """What a worker of a streamed run gets besides the job: the plan, and its shard of a split."""

    plan: StreamPlan
    shard: Callable[[str], Optional[Any]]  # split name -> a Ray Data iterator (None: no such split)


class StreamSplit:
    """One split as the loop sees it: `len()` is the whole split's rows, batches are this worker's."""

    def __init__(self, iterator: Any, rows: int, *, image: bool, device: torch.device, normalize: Optional[ChannelNormalize],
                 shuffle_rows: int = 0, prefetch: int = 1, seed: int = 0) -> None:
        self.iterator, self.rows, self.image, self.device = iterator, rows, image, device
        self.shuffle_rows, self.prefetch, self.seed = shuffle_rows, prefetch, seed
        self.center = self.scale = self.gain = self.offset = None
        if normalize is not None:
            self.center, self.scale = normalize.center[None].to(device), normalize.scale[None].to(device)
            # (x / 255 - center) / scale == x * gain - offset, for uint8 pixels x
            self.gain, self.offset = 1.0 / (255.0 * self.scale), self.center / self.scale

    def __len__(self) -> int:
        return self.rows

    def _batches(self, batch_size: int, epoch: int) -> Iterator[Batch]:
        """(x, y) on the device as they arrive; images uint8 (N, C, H, W), a view of the (N, H, W, C) batch."""
        batches = self.iterator.iter_torch_batches(
            batch_size=batch_size, prefetch_batches=self.prefetch, device=self.device,
            local_shuffle_buffer_size=self.shuffle_rows or None,
            local_shuffle_seed=self.seed + epoch if self.shuffle_rows else None,
        )
        for batch in batches:
            yield (batch["image"].permute(0, 3, 1, 2) if self.image else batch["x"]), batch["y"]

    def raw_batches(self, batch_size: int, epoch: int = 0) -> Iterator[Batch]:
        """(x, y) on the device; images still in pixel space [0, 1], channels first (for augmentation)."""
        for x, y in self._batches(batch_size, epoch):
            yield (x.float().div_(255.0) if self.image else x), y

    def normalized_batches(self, batch_size: int, epoch: int = 0) -> Iterator[Batch]:
        """(x, y) ready for the model: images become (x / 255 - center) / scale as one float copy of the
        uint8 batch and two in-place passes (x * gain - offset), not four passes and three copies."""
        for x, y in self._batches(batch_size, epoch):
            if self.image:
                x = x.float()
                x = x.mul_(self.gain).sub_(self.offset) if self.gain is not None else x.div_(255.0)
            yield x, y

    def stream_batches(self, batch_size: int) -> Iterator[Batch]:
        """Evaluation batches: normalised, nothing random (evaluation.eval_batches uses this)."""
        return self.normalized_batches(batch_size)


def stream_bundle(plan: StreamPlan, inputs: StreamInputs, spec: DataSpec, device: torch.device) -> DataBundle:
    """The DataBundle of a streamed run, in the in-memory path's shape."""
    image = plan.kind == "image"
    pre = plan.preprocessor()
    normalize = ChannelNormalize(torch.from_numpy(pre.center), torch.from_numpy(pre.scale)) if image else None

    def split(name: str, **kwargs: Any) -> Optional[StreamSplit]:
        iterator = inputs.shard(name)
        if iterator is None or not plan.rows.get(name):
            return None
        return StreamSplit(iterator, plan.rows[name], image=image, device=device, normalize=normalize, **kwargs)

    stream = spec.stream
    train = split("train", shuffle_rows=stream.shuffle_buffer_rows, prefetch=stream.prefetch_batches, seed=spec.split.seed)
    assert train is not None, "a streamed run always has a training split (the plan checks it)"
    total = sum(plan.rows.values())
    summary = DataSummary(rows=total, features=int(torch.tensor(plan.input_shape).prod()), task=plan.task, source=plan.source,
                          classes=len(plan.class_names) if plan.task == "classification" else None,
                          missing_values=plan.missing_values)
    return DataBundle(
        train=train, validation=split("validation", prefetch=stream.prefetch_batches), test=split("test"), task=plan.task,
        output_dim=plan.output_dim, input_shape=tuple(plan.input_shape), class_names=list(plan.class_names), summary=summary,
        target_mean=plan.target_mean, target_std=plan.target_std, preprocessor=pre,
        train_transform=batch_train_transform(spec.augmentation, image=image, normalize=normalize),
        inference=streamed_inference(plan.kind, table_schema=plan.table_schema, feature_names=plan.feature_names,
                                     input_shape=plan.input_shape, pre=pre, task=plan.task, class_names=plan.class_names,
                                     spec=spec, target_mean=plan.target_mean, target_std=plan.target_std),
    )


class StreamFeed:
    """The training split's batches for the loop, from the worker's shard."""

    placement = STREAM

    def __init__(self, train: StreamSplit, *, batch_size: int, transform: Optional[Any], channels_last: bool) -> None:
        self.train, self.batch_size = train, batch_size
        self.transform = transform.to(train.device) if transform is not None else None
        self.channels_last = channels_last and train.image
        self.nbytes = None
        self.generator: Optional[torch.Generator] = None

    def epoch_batches(self, epoch: int, seed: int, rank: int) -> Iterator[Batch]:
        if self.transform is not None and self.generator is None:
            self.generator = torch.Generator(device=self.train.device)
        if self.generator is not None:
            self.generator.manual_seed(augmentation_seed(seed, epoch, rank))
        if self.transform is not None:
            batches = ((self.transform(x, self.generator), y) for x, y in self.train.raw_batches(self.batch_size, epoch))
        else:
            batches = self.train.normalized_batches(self.batch_size, epoch)
        for x, y in batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
