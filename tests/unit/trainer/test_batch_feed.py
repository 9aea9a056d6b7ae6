"""Data placement: the automatic choice, the sampler-identical shard order, the batches of both feeds."""

from __future__ import annotations

import pytest
import torch
from kiln_api.status import Phase
from kiln_trainer.batch_feed import (
    DeviceFeed,
    HostFeed,
    augmentation_seed,
    batch_bounds,
    choose_placement,
    make_feed,
    prefetched,
    shard_order,
)
from kiln_trainer.data.summary import DataSummary
from kiln_trainer.events import EpochEnded, Started
from kiln_trainer.status_json import driver_status_json
from kiln_trainer.status_reducer import apply_event, initial_status
from torch.utils.data import DistributedSampler

GiB = 2**30


@pytest.mark.parametrize(
    ("requested", "device", "data_bytes", "free", "fraction", "expected"),
    [
        ("auto", "cuda", 1 * GiB, 4 * GiB, 0.5, "device"),  # fits in half of the free memory
        ("auto", "cuda", 2 * GiB, 4 * GiB, 0.5, "device"),  # exactly the budget
        ("auto", "cuda", 2 * GiB + 1, 4 * GiB, 0.5, "host"),  # one byte over
        ("auto", "cuda", 3 * GiB, 4 * GiB, 0.9, "device"),  # a larger share allowed
        ("auto", "cuda", 1, None, 0.5, "host"),  # free memory unknown
        ("auto", "cpu", 100 * GiB, None, 0.5, "device"),  # CPU: the data is already where the model computes
        ("device", "cuda", 100 * GiB, 4 * GiB, 0.5, "device"),  # forced, even when it does not fit
        ("host", "cuda", 1, 4 * GiB, 0.5, "host"),
        ("host", "cpu", 1, None, 0.5, "host"),
    ],
)
def test_placement_choice(requested, device, data_bytes, free, fraction, expected) -> None:
    assert choose_placement(requested, device_type=device, data_bytes=data_bytes, free_bytes=free, fraction=fraction) == expected


@pytest.mark.parametrize(("rows", "world"), [(10, 1), (10, 3), (1257, 2), (7, 4), (3, 8), (1, 2)])
def test_shard_order_is_exactly_the_distributed_samplers(rows, world) -> None:
    dataset = list(range(rows))
    for seed in (0, 42):
        for epoch in (0, 1, 5):
            for rank in range(world):
                sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
                sampler.set_epoch(epoch)
                mine = shard_order(rows, world_size=world, rank=rank, seed=seed, epoch=epoch)
                assert mine.tolist() == list(iter(sampler))


def test_batch_bounds_drop_only_a_single_sample_tail() -> None:
    assert batch_bounds(9, 4) == [(0, 4), (4, 8)]
    assert batch_bounds(9, 4, skip_single_tail=False) == [(0, 4), (4, 8), (8, 9)]
    assert batch_bounds(6, 4) == [(0, 4), (4, 6)]
    assert batch_bounds(1, 4) == [(0, 1)]  # a single batch of one is all there is


def test_prefetch_issues_the_next_batch_before_handing_out_the_current_one() -> None:
    log: list[str] = []

    def issue(i):
        log.append(f"issue {i}")
        return i

    def ready(i):
        log.append(f"ready {i}")
        return (torch.tensor(i), torch.tensor(i))

    out = []
    for x, _ in prefetched(issue, ready, 3):
        log.append(f"use {int(x)}")
        out.append(int(x))
    assert out == [0, 1, 2]
    assert log == ["issue 0", "issue 1", "ready 0", "use 0", "issue 2", "ready 1", "use 1", "ready 2", "use 2"]
    assert list(prefetched(issue, ready, 0)) == []


class AddNoise:
    """A batch transform with the feed's calling convention: (x, generator) on the batch's device."""

    def to(self, device):
        return self

    def __call__(self, x, generator):
        return x + torch.randn(x.shape, generator=generator, device=x.device)


def test_device_and_host_feeds_yield_the_same_batches_on_cpu() -> None:
    x, y = torch.randn(50, 3), torch.arange(50)
    device = torch.device("cpu")
    feeds = [make_feed(p, x, y, device, batch_size=8, transform=AddNoise(), seed=3) for p in ("device", "host")]
    assert isinstance(feeds[0], DeviceFeed) and isinstance(feeds[1], HostFeed)
    order = shard_order(50, world_size=1, rank=0, seed=3, epoch=1)
    bounds = batch_bounds(50, 8)
    a, b = (list(feed.batches(order, bounds, epoch=1)) for feed in feeds)
    assert len(a) == len(b) == len(bounds)
    for (xa, ya), (xb, yb), (start, end) in zip(a, b, bounds, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya, order[start:end])  # the rows of the shard order, in its order
        assert not torch.allclose(xa, x[order[start:end]])  # augmented
    # Another epoch draws other noise; the same epoch again draws the same (a resumed run does).
    again = list(feeds[0].batches(order, bounds, epoch=1))
    other = list(feeds[0].batches(order, bounds, epoch=2))
    assert torch.equal(again[0][0], a[0][0]) and not torch.equal(other[0][0], a[0][0])


def test_feeds_do_not_copy_data_that_is_already_on_the_device() -> None:
    x, y = torch.randn(10, 2), torch.arange(10)
    feed = make_feed("device", x, y, torch.device("cpu"), batch_size=4)
    assert feed.x.data_ptr() == x.data_ptr() and feed.nbytes == x.numel() * 4 + y.numel() * 8


def test_augmentation_seeds_differ_by_epoch_and_rank() -> None:
    seeds = {augmentation_seed(42, epoch, rank) for epoch in range(5) for rank in range(4)}
    assert len(seeds) == 20


def test_summary_and_status_report_the_placement() -> None:
    summary = DataSummary(rows=100, features=4, classes=None, task="regression", source="synthetic:regression")
    assert "placement" not in summary.describe()
    placed = summary.placed("host", train_rows=70, train_bytes=3 * 2**20, device="cuda:0")
    text = placed.describe()
    assert "placement: host" in text and "70 rows" in text and "3.0 MiB" in text and "cuda:0" in text
    assert "placement: device (training split of 70 rows" in summary.placed("device", train_rows=70, train_bytes=0, device="cpu").describe()

    status = apply_event(initial_status(5), Started(epoch=0, step=0, total_epochs=5, message=text,
                                                    data_placement="host", train_rows=70), [])
    assert status.phase == Phase.running and status.progress.data_placement.value == "host"
    status = apply_event(status, EpochEnded(epoch=1, step=3, metrics={"train_loss": 1.0}, epoch_seconds=1.0), [])
    progress = driver_status_json(status)["progress"]
    assert progress["dataPlacement"] == "host" and progress["trainRows"] == 70
    # An older worker's Started (no placement) leaves the fields unset.
    older = apply_event(initial_status(5), Started(epoch=0, step=0, total_epochs=5), [])
    assert "dataPlacement" not in driver_status_json(older)["progress"]


class FakeEvent:
    def __init__(self, log, n):
        self.log, self.n = log, n

    def synchronize(self):
        self.log.append(f"sync {self.n}")


class FakeStream:
    """What HostFeed uses of a CUDA stream, logging the calls, so the pipeline runs on a CPU-only torch."""

    def __init__(self, log):
        self.log, self.events = log, 0

    def record_event(self):
        self.events += 1
        self.log.append(f"record {self.events}")
        return FakeEvent(self.log, self.events)

    def wait_event(self, event):
        self.log.append(f"wait {event.n}")


def test_the_host_feeds_cuda_pipeline_stages_copies_ahead_and_hands_batches_over(monkeypatch) -> None:
    import contextlib

    from kiln_trainer import batch_feed

    log: list[str] = []
    side, compute = FakeStream(log), FakeStream(log)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: side)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: log.append("record_stream"), raising=False)
    monkeypatch.setattr(batch_feed, "_pinned", lambda like, rows: torch.empty((rows, *like.shape[1:]), dtype=like.dtype))
    x, y = torch.randn(23, 4), torch.arange(23)
    feed = HostFeed(x, y, torch.device("cpu"), batch_size=8)
    feed.cuda = True  # the CUDA branch, on the stubs above
    feed.stream = side
    feed.staging = [(batch_feed._pinned(x, 8), batch_feed._pinned(y, 8)) for _ in range(2)]
    feed.copied = [None, None]
    order = shard_order(23, world_size=1, rank=0, seed=0, epoch=0)
    bounds = batch_bounds(23, 8)
    got = []
    for xb, yb in feed.batches(order, bounds, epoch=0):
        log.append("use")
        got.append((xb.clone(), yb.clone()))
    for (xb, yb), (start, end) in zip(got, bounds, strict=True):
        assert torch.equal(xb, x[order[start:end]]) and torch.equal(yb, order[start:end])
    # Copy 2 is issued before batch 1 is used; staging slot 0 is refilled only after its copy finished;
    # the compute stream waits for each copy and the allocator learns each batch is used there.
    assert log == ["record 1", "record 2", "wait 1", "record_stream", "record_stream", "use",
                   "sync 1", "record 3", "wait 2", "record_stream", "record_stream", "use",
                   "wait 3", "record_stream", "record_stream", "use"]
