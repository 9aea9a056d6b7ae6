"""A streamed split's batches on the worker (stream_feed.py), from a stand-in for Ray Data's iterator."""

from __future__ import annotations

from typing import Any

import torch
from kiln_trainer.data.augmentation import ChannelNormalize
from kiln_trainer.stream_feed import StreamFeed, StreamSplit


class FakeIterator:
    """`iter_torch_batches` over fixed uint8 (N, H, W, C) images, as Ray Data hands them out."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def iter_torch_batches(self, *, batch_size: int, **_: Any):
        for start in range(0, len(self.images), batch_size):
            yield {"image": self.images[start:start + batch_size], "y": self.labels[start:start + batch_size]}


def test_normalised_stream_batches_equal_the_pixel_space_batches_normalised() -> None:
    images = torch.randint(0, 256, (10, 6, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10)
    normalize = ChannelNormalize(torch.tensor([0.2, 0.5, 0.7]), torch.tensor([0.1, 0.25, 0.3]))
    split = StreamSplit(FakeIterator(images, labels), 10, image=True, device=torch.device("cpu"), normalize=normalize)
    raw = list(split.raw_batches(4))
    fast = list(split.stream_batches(4))
    assert [len(y) for _, y in fast] == [4, 4, 2]
    for (x_raw, y_raw), (x, y) in zip(raw, fast, strict=True):
        assert x.dtype == torch.float32 and x.shape == (len(y), 3, 6, 5)
        assert torch.equal(y, y_raw)
        torch.testing.assert_close(x, (x_raw - split.center) / split.scale, rtol=1e-5, atol=1e-5)
    expected = (images.permute(0, 3, 1, 2).float() / 255.0 - split.center) / split.scale
    torch.testing.assert_close(torch.cat([x for x, _ in fast]), expected, rtol=1e-5, atol=1e-5)

    feed = StreamFeed(split, batch_size=4, transform=None, channels_last=True)
    batches = list(feed.epoch_batches(0, seed=0, rank=0))
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), expected, rtol=1e-5, atol=1e-5)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
