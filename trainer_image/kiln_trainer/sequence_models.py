"""Sequence models: LSTM, GRU and a Transformer encoder, each a `KilnModel` (backbone -> head).

Inputs are either numeric windows, float32 (batch, length, features), or token ids, int64
(batch, length) padded with PAD_ID. Token models derive their padding mask from the ids inside
forward(): batches stay (x, y) like every other data set. A position is padding from the first
PAD_ID on (tokenizers never emit it inside a text), so whatever sits after it changes nothing.
"""

from __future__ import annotations

import math

import torch
from kiln_api.spec import ModelSpec, Pooling, PositionalEncoding
from torch import nn

from .data.errors import SpecError

PAD_ID = 0


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """True where a position is padding: at and after the first PAD_ID of each row.

    A row of padding only (an empty text) keeps its first position, so pooling never divides by 0
    and attention never sees a row with every key masked (which would give NaN)."""
    # cumsum of int64, not bool, and no in-place write: ONNX has no bool CumSum, and the exporter
    # cannot express `mask[:, 0] = False` in every model (kiln export --format onnx).
    mask = (ids == PAD_ID).to(torch.int64).cumsum(dim=1) > 0
    return torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:]], dim=1)


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of (batch, length, width) states, skipping padded positions."""
    if mask is None:
        return states.mean(dim=1)
    keep = (~mask).unsqueeze(-1)
    # where(), not a product: a padded position's state may be anything, even inf or NaN.
    summed = torch.where(keep, states, torch.zeros((), dtype=states.dtype, device=states.device)).sum(dim=1)
    return summed / keep.sum(dim=1).to(states.dtype)


class InputEncoder(nn.Module):
    """Token ids -> embeddings (pad row fixed at 0), or numeric features -> a linear projection."""

    def __init__(self, width: int, *, features: int, vocab_size: int) -> None:
        super().__init__()
        self.tokens = vocab_size > 0
        self.embed: nn.Module = (
            nn.Embedding(vocab_size, width, padding_idx=PAD_ID) if self.tokens else nn.Linear(features, width)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.tokens:
            return self.embed(x), padding_mask(x)
        return self.embed(x), None


class RecurrentBackbone(nn.Module):
    """LSTM or GRU; the head gets the last hidden state (of each direction) or the mean over time."""

    def __init__(self, kind: str, spec: ModelSpec, *, features: int, vocab_size: int) -> None:
        super().__init__()
        self.encoder = InputEncoder(spec.hidden_size, features=features, vocab_size=vocab_size)
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(spec.hidden_size, spec.hidden_size, num_layers=spec.layers, batch_first=True,
                       bidirectional=spec.bidirectional, dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.pooling = spec.pooling
        self.directions = 2 if spec.bidirectional else 1
        self.out_features = spec.hidden_size * self.directions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self.encoder(x)
        if mask is None:
            states, final = self.rnn(h)
        elif self.directions == 1 and torch.onnx.is_in_onnx_export():
            return self._padded_forward(h, mask)
        else:
            # Packed, each direction stops (or starts) at a row's last real token: the backward
            # direction never reads padding.
            lengths = (~mask).sum(dim=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            states, final = self.rnn(packed)
            states = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=x.shape[1])[0]
        if self.pooling == Pooling.mean:
            return masked_mean(states, mask)
        final = final[0] if isinstance(final, tuple) else final  # LSTM: (h_n, c_n)
        # h_n is (layers * directions, batch, hidden): the top layer's directions side by side.
        return torch.cat(list(final[-self.directions:]), dim=-1)

    def _padded_forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One direction run over the padded rows, for ONNX export of a unidirectional LSTM or GRU
        of any depth (torch's exporter fails on a packed single layer, and this graph is simpler
        for every depth). A forward state depends only on the positions before it,
        so a real token's state is the one packing gives, and the padding after it changes nothing
        that is read: the top layer's state at the last real token is h_n."""
        states, _ = self.rnn(h)
        if self.pooling == Pooling.mean:
            return masked_mean(states, mask)
        last = ((~mask).sum(dim=1) - 1).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
        return states.gather(1, last).squeeze(1)


def sinusoidal_table(length: int, width: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
    return table


class TransformerBackbone(nn.Module):
    """Encoder over (batch, length) ids or (batch, length, features) windows, mean-pooled over real positions."""

    def __init__(self, spec: ModelSpec, *, length: int, features: int, vocab_size: int) -> None:
        super().__init__()
        width = spec.hidden_size
        self.encoder = InputEncoder(width, features=features, vocab_size=vocab_size)
        self.learned = spec.positional_encoding == PositionalEncoding.learned
        if self.learned:
            self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        else:
            self.register_buffer("position", sinusoidal_table(length, width), persistent=False)
        layer = nn.TransformerEncoderLayer(width, spec.heads, spec.feed_forward, spec.dropout, batch_first=True,
                                           norm_first=True)
        # No nested tensors: their fast path changes results with the padding, which must not matter.
        self.layers = nn.TransformerEncoder(layer, spec.layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self.encoder(x)
        h = h + self.position[: h.shape[1]].to(h.dtype)
        return masked_mean(self.layers(h, src_key_padding_mask=mask), mask)


def sequence_backbone(spec: ModelSpec, input_shape: tuple[int, ...], vocab_size: int) -> nn.Module:
    """The backbone for (length,) token ids when vocab_size > 0, else for (length, features) windows."""
    arch = spec.architecture.value
    expected = 1 if vocab_size > 0 else 2
    if len(input_shape) != expected:
        what = "token ids (length,)" if vocab_size > 0 else "windows (length, features)"
        raise SpecError("spec.model.architecture", f"{arch} needs {what}, but the data has shape {tuple(input_shape)}; "
                        "use data.format sequence or text")
    length = int(input_shape[0])
    features = 0 if vocab_size > 0 else int(input_shape[1])
    if arch == "transformer":
        if spec.hidden_size % spec.heads:
            raise SpecError("spec.model.heads", f"{spec.heads} heads do not divide hiddenSize {spec.hidden_size}")
        return TransformerBackbone(spec, length=length, features=features, vocab_size=vocab_size)
    return RecurrentBackbone(arch, spec, features=features, vocab_size=vocab_size)
