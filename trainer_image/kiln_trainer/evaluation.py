"""Batches, sharded evaluation and cross-rank reduction for the training loop.

Each rank evaluates its own slice of a split (`rank::world_size`, no padding, so no sample
counts twice) and contributes sums; one all-reduce turns them into exact global metrics,
identical on every rank. That is what lets every rank take the same early-stopping
decision without a second collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

CLASSIFICATION = "classification"


def batches(dataset: Dataset, indices: Sequence[int], batch_size: int,
            skip_single_tail: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches for `indices`. In-memory datasets without a transform are sliced
    in one indexing operation instead of collating samples one by one (much faster on CPU).

    `skip_single_tail` drops a last batch of one sample: batch norm cannot train on it. Every
    rank holds the same number of indices (DistributedSampler pads), so all ranks drop it alike
    and DDP's collectives stay matched."""
    x_all = getattr(dataset, "x", None)
    y_all = getattr(dataset, "y", None)
    direct = x_all is not None and y_all is not None and getattr(dataset, "transform", None) is None
    index = torch.as_tensor(list(indices), dtype=torch.long)
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        if skip_single_tail and len(chunk) == 1 and len(index) > 1:
            return
        if direct:
            yield x_all[chunk], y_all[chunk]
        else:
            samples = [dataset[int(i)] for i in chunk]
            yield torch.stack([s[0] for s in samples]), torch.stack([torch.as_tensor(s[1]) for s in samples])


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a vector across ranks (a no-op without a process group). float64 keeps counts exact."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


# Sums each rank contributes for one split: loss*n, correct, n, |err| sum, err^2 sum.
SUM_FIELDS = 5
# Evaluation batch of an MLP (feature vectors: a row's activations are a few hidden units, so a
# large batch costs little memory and saves per-batch overhead).
WIDE_EVAL_BATCH = 256


def eval_batch_size(train_batch: int, architecture: str) -> int:
    """Rows per evaluation batch for a model trained with `train_batch` rows per worker.

    Only an MLP evaluates in wider batches. Every other architecture (convolutions, sequences) keeps
    the training batch: their activations grow with every row (a 128-channel 3x3 conv on 128x128
    images makes 8 MiB per image per layer): a 256-row batch held 4 GiB where training needed 1 GiB,
    and since a split of fewer rows is one smaller batch, the peak grew with the data set up to 256
    test rows (issue #15). The training batch fitted with its backward graph, so it fits here too."""
    return max(train_batch, WIDE_EVAL_BATCH) if architecture == "mlp" else train_batch


def eval_batches(dataset: Dataset, rank: int, world_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's slice of `dataset` (`rank::world_size`) in batches: views of in-memory tensors
    (no gather, nothing copied where the data already lives on the device), else collated samples."""
    stream = getattr(dataset, "stream_batches", None)
    if stream is not None:  # a streamed split: Ray Data already gave this rank its share
        yield from stream(batch_size)
        return
    x_all, y_all = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if x_all is None or y_all is None or getattr(dataset, "transform", None) is not None:
        yield from batches(dataset, range(rank, len(dataset), world_size), batch_size)
        return
    x_all, y_all = x_all[rank::world_size], y_all[rank::world_size]
    for start in range(0, len(y_all), batch_size):
        yield x_all[start : start + batch_size].contiguous(), y_all[start : start + batch_size].contiguous()


@torch.no_grad()
def split_sums(
    model: nn.Module,
    dataset: Optional[Dataset],
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    device: torch.device,
    task: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autocast: Callable[[], Any],
    collect: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
) -> list[float]:
    """This rank's sums over its slice of `dataset` (zeros when there is no such split); `collect`
    also gets each batch's (outputs, targets), so a report needs no second pass over the split.

    The sums stay on the device until the end: one host sync per split, not a few per batch
    (a `collect` that copies each batch to the host syncs per batch, as the report needs).
    Each is accumulated in float64 in the same order as Python floats would be, so the
    metrics are the same to the last bit."""
    if dataset is None:
        return [0.0] * SUM_FIELDS
    sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(SUM_FIELDS)]
    was_training = model.training
    model.eval()
    for x, y in eval_batches(dataset, rank, world_size, batch_size):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        out = out.float()
        if collect is not None:
            collect(out, y)
        n = len(y)
        sums[0] += loss_fn(out, y).double() * n
        sums[2] += n
        if task == CLASSIFICATION:
            sums[1] += (out.argmax(dim=1) == y).sum().double()
        else:
            err = (out - y.view_as(out)).float()
            sums[3] += (err.abs().mean(dim=-1).sum() if err.dim() > 1 else err.abs().sum()).double()
            sums[4] += ((err**2).mean(dim=-1).sum() if err.dim() > 1 else (err**2).sum()).double()
    model.train(was_training)
    return torch.stack(sums).tolist()


def metrics_from_sums(sums: Sequence[float], prefix: str, task: str, target_std: float = 1.0) -> dict[str, float]:
    """Global metrics from all-reduced sums; regression errors are reported in target units."""
    loss_sum, correct, n, abs_sum, sq_sum = sums
    if n <= 0:
        return {}
    metrics = {f"{prefix}_loss": loss_sum / n}
    if task == CLASSIFICATION:
        metrics[f"{prefix}_accuracy"] = correct / n
    else:
        metrics[f"{prefix}_mae"] = abs_sum / n * target_std
        metrics[f"{prefix}_rmse"] = math.sqrt(max(sq_sum / n, 0.0)) * target_std
    return metrics
