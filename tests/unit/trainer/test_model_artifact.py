"""model.pt describes itself, loads without pickle or training data, and refuses anything else clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kiln_api.spec import ModelSpec, PretrainedSpec
from kiln_trainer.model_artifact import (
    MAX_METADATA_BYTES,
    METADATA_KEY,
    WEIGHTS_KEY,
    ArtifactError,
    read_artifact,
)
from kiln_trainer.models import build_model, load_pretrained

from tests.support.datafiles import write_table
from tests.support.model_files import MLP, SavedModel, rewrite_metadata, save_model


@pytest.fixture
def saved(tmp_path: Path) -> SavedModel:
    write_table(tmp_path / "t.csv", rows=60, missing=3)
    return save_model({"source": str(tmp_path / "t.csv")}, MLP, tmp_path / "model.pt")


def test_a_saved_model_loads_back_with_its_description_and_the_same_outputs(saved):
    artifact = read_artifact(str(saved.path))
    meta, bundle = artifact.metadata, saved.bundle
    assert (meta.task, meta.output_dim, tuple(meta.input_shape)) == (bundle.task, bundle.output_dim, bundle.input_shape)
    assert meta.class_names == bundle.class_names == ["no", "yes"]
    assert meta.model["architecture"] == "mlp" and meta.model["hiddenUnits"] == MLP["hiddenUnits"]
    assert meta.inference == bundle.inference and meta.inference["format"] == "table"
    with torch.inference_mode():
        assert torch.equal(artifact.build()(bundle.test.x), saved.net(bundle.test.x))


def test_the_table_recipe_names_every_source_column_in_feature_order(saved):
    recipe = saved.bundle.inference
    assert [c["name"] for c in recipe["columns"]] == ["a", "b", "colour"]
    assert recipe["columns"][2] == {"name": "colour", "kind": "category", "values": ["blue", "green", "red"]}
    assert recipe["feature_names"] == ["a", "b", "colour=blue", "colour=green", "colour=red"]
    assert len(recipe["fill"]) == len(recipe["center"]) == len(recipe["scale"]) == 5
    assert recipe["target"] == "target"


def test_the_file_is_plain_tensors_that_pretrained_loading_still_reads(saved, tmp_path):
    loaded = torch.load(saved.path, weights_only=True)
    assert loaded[METADATA_KEY].dtype == torch.uint8 and set(loaded) == {METADATA_KEY, WEIGHTS_KEY}
    # spec.model.pretrained accepts the new model.pt as it did the bare state dict.
    model = build_model(ModelSpec.model_validate(MLP), saved.bundle.input_shape, saved.bundle.output_dim)
    load_pretrained(model, PretrainedSpec(path=str(saved.path)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.net.state_dict().items())


def _set(key, value):
    return lambda loaded, document: document.__setitem__(key, value)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_set("version", 7), "written by a newer Kiln"),
        (_set("format", "other"), "not a Kiln model file"),
        (lambda loaded, document: document.update(output_dim=3, class_names=["a", "b", "c"]), "weights do not fit the mlp"),
        (_set("input_shape", [1 << 20, 1 << 20]), "input_shape"),
        (_set("task", "ranking"), "task"),
        (_set("class_names", ["only one"]), "1 class names for 2 outputs"),
        (_set("surprise", 1), "surprise"),
        (lambda loaded, document: loaded[WEIGHTS_KEY].pop("head.weight"), "missing head.weight"),
        # Sizes that would need terabytes are refused by their shapes, before anything is allocated.
        (lambda loaded, document: document["model"].__setitem__("hiddenUnits", [65536] * 32), "weights do not fit"),
        (lambda loaded, document: document["model"].__setitem__("hiddenUnits", [0]), "architecture is not valid"),
    ],
)
def test_an_edited_model_file_is_refused_naming_what_is_wrong(saved, tamper, message):
    rewrite_metadata(saved.path, tamper)
    with pytest.raises(ArtifactError, match=message) as caught:
        read_artifact(str(saved.path)).build()
    assert str(saved.path) in str(caught.value)


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"head.weight": torch.zeros(2, 2)}, "bare state dict without Kiln's metadata.*re-run training"),
        ({"weights": [1, 2]}, "not a Kiln model file"),
        ({METADATA_KEY: torch.zeros(3), WEIGHTS_KEY: {}}, "not a byte string"),
        ({METADATA_KEY: torch.tensor(list(b"{not json"), dtype=torch.uint8), WEIGHTS_KEY: {}}, "not JSON"),
        ({METADATA_KEY: torch.zeros(MAX_METADATA_BYTES + 1, dtype=torch.uint8), WEIGHTS_KEY: {}}, "bytes of metadata"),
        ({"evil": _RunsCode()}, "cannot be read as plain tensors"),
    ],
)
def test_a_file_that_is_not_a_kiln_model_is_refused_without_running_code(tmp_path, capsys, content, message):
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(ArtifactError, match=message):
        read_artifact(str(path))
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_bytes_that_are_no_pytorch_file_are_refused(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(ArtifactError, match="not a Kiln model file"):
        read_artifact(str(tmp_path / "model.pt"))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        read_artifact(str(tmp_path / "absent.pt"))
