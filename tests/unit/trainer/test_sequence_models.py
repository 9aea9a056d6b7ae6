"""LSTM, GRU and Transformer models: shapes for windows and token ids, padding that changes
nothing, and spec errors that name the field."""

from __future__ import annotations

import pytest
import torch
from kiln_api.spec import ModelSpec
from kiln_api.validate_cli import check_manifest
from kiln_trainer.data.errors import SpecError
from kiln_trainer.models import KilnModel, build_model
from kiln_trainer.sequence_models import padding_mask

VOCAB = 50
SPECS = {
    "lstm": {"architecture": "lstm", "layers": 2, "hiddenSize": 16},
    "lstm-bi-mean": {"architecture": "lstm", "hiddenSize": 16, "bidirectional": True, "pooling": "mean"},
    "gru-bi-last": {"architecture": "gru", "layers": 1, "hiddenSize": 16, "bidirectional": True},
    "transformer": {"architecture": "transformer", "hiddenSize": 16, "heads": 4, "feedForward": 32},
    "transformer-sin": {"architecture": "transformer", "hiddenSize": 16, "heads": 2, "feedForward": 32,
                        "positionalEncoding": "sinusoidal"},
}


def model(name: str, input_shape: tuple[int, ...], vocab_size: int = 0, outputs: int = 3) -> KilnModel:
    torch.manual_seed(0)
    return build_model(ModelSpec.model_validate({**SPECS[name], "dropout": 0.1}), input_shape, outputs,
                       vocab_size=vocab_size).eval()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_numeric_windows_and_token_ids_give_one_output_row_per_sample(name):
    windows = torch.randn(5, 12, 3)
    assert model(name, (12, 3))(windows).shape == (5, 3)
    ids = torch.randint(1, VOCAB, (5, 12))
    assert model(name, (12,), VOCAB)(ids).shape == (5, 3)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_whatever_sits_after_the_first_pad_changes_nothing(name):
    net = model(name, (10,), VOCAB)
    real = torch.tensor([[5, 7, 9, 0, 0, 0, 0, 0, 0, 0], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [8, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    junk = real.clone()
    junk[0, 4:] = torch.randint(1, VOCAB, (6,))
    junk[2, 2:] = torch.randint(1, VOCAB, (8,))
    with torch.no_grad():
        clean, noisy = net(real), net(junk)
        alone = net(real[:1, :3])  # the same text, not padded at all (a shorter batch)
    torch.testing.assert_close(clean, noisy, rtol=0, atol=1e-6)
    torch.testing.assert_close(clean[:1], alone, rtol=0, atol=1e-5)


def test_padding_mask_starts_at_the_first_pad_and_keeps_one_position_of_an_empty_text():
    ids = torch.tensor([[4, 0, 5], [4, 5, 6], [0, 0, 0]])
    assert padding_mask(ids).tolist() == [[False, True, True], [False, False, False], [False, True, True]]


def test_token_models_train_their_embeddings_but_never_the_pad_row():
    net = model("transformer", (6,), VOCAB).train()
    net(torch.tensor([[3, 4, 0, 0, 0, 0]])).sum().backward()
    grad = net.backbone.encoder.embed.weight.grad
    assert grad[3].abs().sum() > 0 and grad[0].abs().sum() == 0


@pytest.mark.parametrize(("arch", "shape", "vocab"), [("lstm", (6,), 0), ("transformer", (6, 2), VOCAB),
                                                      ("cnn", (6,), VOCAB), ("mlp", (6,), VOCAB)])
def test_models_refuse_inputs_they_cannot_read(arch, shape, vocab):
    with pytest.raises(SpecError) as caught:
        build_model(ModelSpec.model_validate({"architecture": arch}), shape, 2, vocab_size=vocab)
    assert caught.value.field == "spec.model.architecture"


def job(spec: dict) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "seq"}, "spec": spec}


SERIES = {"source": "pvc://data/series.csv", "format": "sequence", "target": "value", "sequence": {"length": 8}}


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"model": {"architecture": "transformer", "hiddenSize": 30, "heads": 4}, "data": {"source": "synthetic:text"}},
     "spec.model.heads", "divide"),
    ({"model": {"architecture": "lstm"}, "data": {"source": "builtin:iris"}}, "spec.model.architecture", "sequence"),
    ({"model": {"architecture": "mlp"}, "data": {"source": "synthetic:text"}}, "spec.model.architecture", "text"),
    ({"model": {"architecture": "resnet18"}, "data": SERIES}, "spec.model.architecture", "image"),
    ({"model": {"architecture": "gru"}, "data": {**SERIES, "sequence": None}}, "spec.data.sequence", "format sequence"),
    ({"model": {"architecture": "gru"}, "data": {"source": "pvc://d/r.csv", "format": "text"}}, "spec.data.text", "column"),
    ({"data": {"source": "pvc://d/t.csv", "sequence": {"length": 4}}}, "spec.data.format", "format: sequence"),
    ({"model": {"architecture": "gru"}, "data": {**SERIES, "loading": "stream"}}, "spec.data.loading", "not supported"),
    ({"model": {"architecture": "gru"}, "data": {"source": "synthetic:sequence", "format": "text"}}, "spec.data.format", "synthetic:sequence"),
    ({"model": {"architecture": "gru", "hiddenSize": 0}, "data": SERIES}, "spec.model.hiddenSize", ""),
    ({"model": {"architecture": "gru"}, "data": {**SERIES, "sequence": {"length": 0}}}, "spec.data.sequence.length", ""),
])
def test_bad_sequence_specs_are_refused_naming_the_field(spec, field, words):
    if spec["data"].get("sequence", "") is None:
        spec["data"] = {k: v for k, v in spec["data"].items() if k != "sequence"}
    errors, parsed = check_manifest(job(spec))
    assert parsed is None
    assert any(e.path == field and words in str(e) for e in errors), [str(e) for e in errors]


def test_a_sequence_job_with_every_new_field_is_accepted():
    spec = {"model": {"architecture": "gru", "layers": 3, "hiddenSize": 24, "bidirectional": True, "pooling": "mean"},
            "data": {**SERIES, "sequence": {"length": 16, "stride": 4, "horizon": 2, "features": ["value", "temp"], "groupBy": "station"}},
            "checkpoint": {"storage": "pvc://ckpt/seq", "metric": "val_loss"}}
    errors, parsed = check_manifest(job(spec))
    assert errors == [] and parsed is not None and parsed.spec.data.sequence.group_by == "station"


def test_an_mlp_reads_a_window_flattened():
    net = build_model(ModelSpec.model_validate({"architecture": "mlp", "hiddenUnits": [8]}), (6, 2), 1)
    assert net(torch.randn(4, 6, 2)).shape == (4, 1)
