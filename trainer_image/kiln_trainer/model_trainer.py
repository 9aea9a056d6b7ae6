"""One worker's model, data and optimizer for a built-in model: one epoch of training, evaluation,
and what a checkpoint holds besides the loop state. The epoch loop is builtin_run.py; the
bookkeeping shared with custom code (checkpoints, early stopping, events) is run_core.py.

Design (bench/trainer_overhead.py compares the whole thing with a hand-written DDP loop on CPU,
bench/gpu_loop.py with a hand-written single-device loop on a GPU):
- Data (batch_feed.py): the training split lives on the device when it fits (always on CPU),
  else in host memory with each batch copied ahead on a side stream. Each rank takes exactly the
  rows a DistributedSampler would give it; batches are gathered, augmented and put in the model's
  memory format where they are used.
- Per step there is no host sync and no work the job does not ask for: no copy of data that is
  already on the device, the loss is summed on the device and read once per epoch (and by rank 0
  at most every STEP_EVENT_INTERVAL_S for the progress bar), one autocast context for the whole
  run, the learning rate set only when it changes within an epoch, L1 only when asked for.
- On CUDA (speedups.py): fused optimizers, TF32 for fp32 jobs, channels-last and cudnn.benchmark
  for convolutional models; `hyperparameters.compile` wraps the forward in torch.compile.
- Checkpoints: rank 0 copies the state (snapshot.py; the only stall) and a background thread
  serialises, writes and prunes it (checkpoints.py); every start resumes from the newest valid one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch
from kiln_api import TrainingJob
from kiln_api.spec import ModelSpec
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from . import optim
from .batch_feed import (
    DEVICE,
    BatchFeed,
    batch_bounds,
    choose_placement,
    free_device_memory,
    make_feed,
    shard_order,
    tensor_bytes,
)
from .checkpoint_fence import model_fingerprint
from .checkpoints import CheckpointInfo
from .data import ArrayDataset, DataBundle, load_data
from .data.slice_columns import ColumnRequest
from .evaluation import eval_batch_size, split_sums
from .events import FirstStep, StepProgress
from .model_artifact import artifact_bytes, model_metadata
from .models import build_model, load_pretrained
from .run_core import LoopState, RunCore
from .seeding import rng_state, seed_everything, set_rng_state
from .speedups import apply_backend_flags, forward_of, select_speedups, use_fused_optimizer
from .stream_feed import STREAM, StreamFeed, StreamSplit, stream_bundle
from .worker import RunPaths, WorkerEnv, write_bytes

log = logging.getLogger("kiln_trainer.train")
STEP_EVENT_INTERVAL_S = 0.5
NO_CONTEXT = contextlib.nullcontext()  # reusable: entering it does nothing


class ModelTrainer:
    """One worker's model, data, optimizer and loss for a built-in-model run."""

    def __init__(self, job: TrainingJob, env: WorkerEnv, paths: RunPaths) -> None:
        self.job, self.env, self.paths = job, env, paths
        spec = job.spec
        self.hp = hp = spec.hyperparameters
        seed_everything(hp.seed)
        model_spec = spec.effective_model
        self.data: DataBundle = (
            stream_bundle(env.stream.plan, env.stream, spec.data, env.device) if env.stream is not None
            else load_data(spec.data, pvc_root=paths.pvc_root, for_architecture=model_spec.architecture.value,
                           columns=ColumnRequest.of(spec.evaluation))
        )
        self.speedups = select_speedups(env.device.type, hp.mixed_precision.value, model_spec.architecture.value,
                                        hp.optimizer.value)
        apply_backend_flags(self.speedups)
        self.model: nn.Module = self._build_model(model_spec)
        self.batch_size = max(hp.batch_size // env.world_size, 1)
        self.eval_batch_size = eval_batch_size(self.batch_size, model_spec.architecture.value)
        self.feed: BatchFeed | StreamFeed = self._place_data()
        self.ddp: nn.Module = self._wrap(self.model)
        # Streamed shards may differ by a few rows between ranks: DDP's Join shadows the all-reduces
        # of a rank that ran out, so the others finish their epoch instead of waiting forever.
        self._join = isinstance(self.feed, StreamFeed) and isinstance(self.ddp, DistributedDataParallel)
        self._no_sync = self.ddp.no_sync if isinstance(self.ddp, DistributedDataParallel) else None
        self.forward = forward_of(self.ddp, hp.compile, env.device.type)
        # Every rank holds ceil(rows / world) shard positions (the sampler pads); the batches never change.
        shard_rows = math.ceil(len(self.data.train) / env.world_size)
        self.bounds = batch_bounds(shard_rows, self.batch_size)
        self.steps_per_epoch = math.ceil(math.ceil(shard_rows / self.batch_size) / hp.gradient_accumulation_steps)
        fused = use_fused_optimizer(self.speedups, self.model.parameters())
        self.optimizer = optim.build_optimizer(self.model, hp, fused=fused)
        self.scheduler = optim.build_scheduler(self.optimizer, hp, steps_per_epoch=self.steps_per_epoch)
        self.scaler = optim.make_grad_scaler(hp.mixed_precision, env.device)
        self.loss_fn = optim.loss_function(self.data.task)
        self._autocast = self.autocast()  # one context, entered once per step (never nested)
        fingerprint = model_fingerprint(self.model.state_dict(), self.data.input_shape, self.data.output_dim, self.data.task)
        self.core = RunCore.open(job, env, paths, fingerprint=fingerprint)
        self.first_step_time: Optional[float] = None

    @property
    def state(self) -> LoopState:
        return self.core.state

    def _build_model(self, model_spec: ModelSpec) -> nn.Module:
        model = build_model(model_spec, self.data.input_shape, self.data.output_dim,
                            vocab_size=int(self.data.inference.get("vocab_size", 0)))
        if model_spec.pretrained is not None:
            load_pretrained(model, model_spec.pretrained, pvc_root=self.paths.pvc_root)
        model = model.to(self.env.device)
        return model.to(memory_format=torch.channels_last) if self.speedups.channels_last else model

    def _place_data(self) -> BatchFeed | StreamFeed:
        """Keep the training (and validation) split on the device when it fits, else on the host;
        streamed data arrives batch by batch (stream_feed.py)."""
        data, device, spec = self.data, self.env.device, self.job.spec.data
        train, validation = data.train, data.validation
        if isinstance(train, StreamSplit):
            data.summary = data.summary.placed(STREAM, train_rows=len(train), train_bytes=None, device=str(device))
            return StreamFeed(train, batch_size=self.batch_size, transform=data.train_transform,
                              channels_last=self.speedups.channels_last)
        assert isinstance(train, ArrayDataset)
        val_bytes = tensor_bytes(validation.x, validation.y) if isinstance(validation, ArrayDataset) else 0
        placement = choose_placement(spec.placement.value, device_type=device.type, fraction=spec.device_memory_fraction,
                                     data_bytes=tensor_bytes(train.x, train.y) + val_bytes, free_bytes=free_device_memory(device))
        feed = make_feed(placement, train.x, train.y, device, batch_size=self.batch_size, transform=data.train_transform,
                         channels_last=self.speedups.channels_last, seed=self.hp.seed, rank=self.env.rank)
        if placement == DEVICE and isinstance(validation, ArrayDataset):
            data.validation = ArrayDataset(validation.x.to(device), validation.y.to(device))
        data.summary = data.summary.placed(placement, train_rows=len(train), train_bytes=feed.nbytes, device=str(device))
        return feed

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.env.world_size <= 1:
            return model
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def autocast(self) -> Any:
        return optim.autocast_context(self.hp.mixed_precision, self.env.device)

    # ------------------------------------------------------------------ resume

    def resume(self) -> Optional[CheckpointInfo]:
        saved = self.core.resume(map_location=self.env.device)
        if saved is None:
            return None
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        return self.core.resumed

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch_index: int) -> tuple[float, int]:
        """Train one epoch on this rank's shard; returns (loss sum, sample count)."""
        env, bounds = self.env, self.bounds
        self.ddp.train()
        # Summed on the device: a float() per step would synchronise with the GPU every step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        count, last_event, report = 0, time.monotonic(), env.rank == 0 and env.channel is not None
        self.optimizer.zero_grad(set_to_none=True)
        with Join([self.ddp]) if self._join else NO_CONTEXT:
            for i, (x, y, last) in enumerate(self._epoch_batches(epoch_index)):
                rows = len(y)
                loss = self._step(i, x, y, last)
                loss_sum.add_(loss.detach(), alpha=rows)  # float64 += rows * loss, exactly as before
                count += rows
                if report and time.monotonic() - last_event > STEP_EVENT_INTERVAL_S:
                    last_event = time.monotonic()
                    env.emit(StepProgress(epoch=self.state.epoch, step=self.state.step, batch=i + 1,
                                          batches=max(len(bounds), i + 1), loss=float(loss_sum) / max(count, 1),
                                          lr=self.scheduler.current_lr()))
        return float(loss_sum), count

    def _epoch_batches(self, epoch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """(x, y, is the epoch's last batch) of this rank's share of the training split."""
        env, feed = self.env, self.feed
        if isinstance(feed, StreamFeed):
            # A stream's length is known only at its end: one batch of look-ahead finds the last.
            yield from mark_last(feed.epoch_batches(epoch_index, self.hp.seed, env.rank))
            return
        order = shard_order(len(self.data.train), world_size=env.world_size, rank=env.rank, seed=self.hp.seed,
                            epoch=epoch_index)
        last = len(self.bounds) - 1
        for i, (x, y) in enumerate(feed.batches(order, self.bounds, epoch_index)):
            yield x, y, i == last

    def _step(self, i: int, x: torch.Tensor, y: torch.Tensor, last: bool) -> torch.Tensor:
        """Forward and backward of batch `i`; an optimizer step at an accumulation boundary."""
        accumulation = self.hp.gradient_accumulation_steps
        boundary = accumulation == 1 or (i + 1) % accumulation == 0 or last
        with self._no_sync() if self._no_sync is not None and not boundary else NO_CONTEXT:
            with self._autocast:
                loss = self.loss_fn(self.forward(x).float(), y)
                if self.hp.l1 > 0:
                    loss = loss + self.hp.l1 * optim.l1_penalty(self.model)
            self._backward(loss if accumulation == 1 else loss / accumulation)
        if boundary:
            self._optimizer_step()
            if self.first_step_time is None:
                self.first_step_time = time.time()
                self.env.emit(FirstStep(unix_time=self.first_step_time))
        return loss

    def _backward(self, loss: torch.Tensor) -> None:
        # A disabled scaler (everything but fp16 on CUDA) passes the loss through unchanged.
        self.scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        clip = self.hp.gradient_clip_norm
        if clip:
            self.scaler.unscale_(self.optimizer)  # a no-op unless the scaler is enabled
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step_batch()
        self.state.step += 1

    def evaluate(self, dataset: Any) -> list[float]:
        return split_sums(
            self.model, dataset, rank=self.env.rank, world_size=self.env.world_size, batch_size=self.eval_batch_size,
            device=self.env.device, task=self.data.task, loss_fn=self.loss_fn, autocast=self.autocast,
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, metrics: dict[str, float]) -> None:
        """Rank 0: the model's, optimizer's and RNG's state go into the checkpoint beside the loop state."""
        if self.core.writer is None:
            return
        self.core.checkpoint(metrics, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        })

    # ------------------------------------------------------------------ the end

    def final_model_state(self) -> dict[str, torch.Tensor]:
        es = self.job.spec.early_stopping
        if es is not None and es.restore_best_weights:
            best = self.core.store.best()
            if best is not None:
                log.info("restoring the best weights from %s", best.location)
                return self.core.store.load_state(best, map_location=self.env.device)["model"]
        return self.model.state_dict()

    def save_final_model(self, state: dict[str, torch.Tensor]) -> None:
        if self.env.rank == 0 and self.paths.model_path:
            # model.pt sits beside the checkpoints: a driver another one replaced must not overwrite it.
            self.core.fence.check_current("writing model.pt")
            # Self-describing (model_artifact.py): `kiln predict` and `kiln export` need nothing else.
            metadata = model_metadata(model_spec=self.job.spec.effective_model, data=self.data, job=self.job.name)
            write_bytes(self.paths.model_path, artifact_bytes(state, metadata))



def mark_last(items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any, bool]]:
    """(a, b, is_last) for each pair, looking one item ahead."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield (*current, False)
        current = following
    yield (*current, True)
