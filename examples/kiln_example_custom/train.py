"""Bring-your-own training loop with the kiln_trainer SDK.

Kiln runs `train(config)` on every worker (the torch.distributed process group is already
set up); `kiln_trainer.report` gives it metrics, checkpoints and early stopping for free.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import kiln_trainer
import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def train(config: dict[str, Any]) -> None:
    torch.manual_seed(config["seed"])
    rank, world = config["rank"], config["world_size"]
    x_train, y_train, x_val, y_val = _data(config["seed"])
    x_train, y_train = x_train[rank::world], y_train[rank::world]  # this worker's shard
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    resume = kiln_trainer.get_checkpoint()
    if resume:
        state = torch.load(os.path.join(resume, "state.pt"), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(config["start_epoch"], config["epochs"]):
        generator = torch.Generator().manual_seed(config["seed"] + epoch)
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), config["batch_size"]):
            idx = order[start : start + config["batch_size"]]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        with torch.no_grad():
            logits = model(x_val)
            val_loss = float(loss_fn(logits, y_val))
            val_accuracy = float((logits.argmax(1) == y_val).float().mean())
        metrics = {"train_loss": total / len(y_train), "val_loss": val_loss, "val_accuracy": val_accuracy}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, os.path.join(tmp, "state.pt"))
            kiln_trainer.report(metrics, checkpoint_dir=tmp)
        if kiln_trainer.should_stop():
            break
    # The job's model.pt (rank 0 writes it): the plain module's weights, without DDP's "module." prefix.
    kiln_trainer.save_model(model.module.state_dict() if isinstance(model, nn.parallel.DistributedDataParallel)
                            else model.state_dict())
