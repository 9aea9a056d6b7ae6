"""`kiln inspect FILE [--output DIR]` through the CLI's main(): the report, its files, and bad input
answered with one line and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kiln_cli.main import main
from PIL import Image

from tests.support.datafiles import write_image_folder, write_table


def manifest(tmp_path: Path, data: dict, spec: dict | None = None) -> str:
    path = tmp_path / "job.yaml"
    document = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "inspect-me"},
                "spec": {"data": data, **(spec or {})}}
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_output_writes_the_json_report_and_the_histogram_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_table(tmp_path / "t.csv", rows=50, missing=3)
    code = main(["inspect", manifest(tmp_path, {"source": str(tmp_path / "t.csv")}), "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert report["rows"] == 50 and {c["name"] for c in report["column_info"]} == {"a", "b", "colour", "target"}
    assert (tmp_path / "out" / "inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rows: 50, columns: 4" in out and "class balance (2 classes)" in out and "warnings" in out


def test_without_output_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_table(tmp_path / "t.csv", rows=30)
    assert main(["inspect", manifest(tmp_path, {"source": str(tmp_path / "t.csv")})]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "t.csv"]


def test_image_folder_report_prints_classes_sizes_and_the_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=4)
    assert main(["inspect", manifest(tmp_path, {"source": str(root)}), "--sample-images", "3"]) == 0
    out = capsys.readouterr().out
    assert "cat" in out and "dog" in out and "channel means" in out and "3 of 8 images" in out


def _missing_manifest(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "nope.yaml")]


def _invalid_manifest(tmp_path: Path) -> list[str]:
    return [manifest(tmp_path, {"source": "builtin:digits"}, {"hyperparameters": {"epochs": 0}})]


def _missing_data(tmp_path: Path) -> list[str]:
    return [manifest(tmp_path, {"source": str(tmp_path / "absent.csv")})]


def _missing_target(tmp_path: Path) -> list[str]:
    write_table(tmp_path / "t.csv", rows=20)
    return [manifest(tmp_path, {"source": str(tmp_path / "t.csv"), "target": "label"})]


def _unreadable_image(tmp_path: Path) -> list[str]:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    (root / "dog" / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return [manifest(tmp_path, {"source": str(root)})]


def _unknown_text_column(tmp_path: Path) -> list[str]:
    write_table(tmp_path / "t.csv", rows=20)
    return [manifest(tmp_path, {"source": str(tmp_path / "t.csv")}), "--text-column", "review"]


def _unparseable_csv(tmp_path: Path) -> list[str]:
    (tmp_path / "t.csv").write_bytes(b"a,target\n1,2\n\"unterminated,3\n")
    return [manifest(tmp_path, {"source": str(tmp_path / "t.csv")})]


def _nested_parquet(tmp_path: Path) -> list[str]:
    import pandas as pd

    pd.DataFrame({"tags": [[1, 2], [3]] * 5, "target": [0, 1] * 5}).to_parquet(tmp_path / "t.parquet")
    return [manifest(tmp_path, {"source": str(tmp_path / "t.parquet")})]


def _decompression_bomb(tmp_path: Path) -> list[str]:
    root = write_image_folder(tmp_path / "imgs", per_class=2, size=8)
    Image.new("L", (40, 40)).save(root / "cat" / "huge.png")  # over twice the pixel limit the test sets
    return [manifest(tmp_path, {"source": str(root)})]


def _unwritable_output(tmp_path: Path) -> list[str]:
    write_table(tmp_path / "t.csv", rows=20)
    (tmp_path / "taken").write_text("a file where the output directory should go")
    return [manifest(tmp_path, {"source": str(tmp_path / "t.csv")}), "--output", str(tmp_path / "taken")]


@pytest.mark.parametrize(("make", "says"), [
    (_missing_manifest, "nope.yaml: no such file"),
    (_invalid_manifest, "spec.hyperparameters.epochs: Invalid value: 0"),
    (_missing_data, "spec.data.source: " ),
    (_missing_target, "spec.data.target: column 'label' not found"),
    (_unreadable_image, "torn.png"),
    (_unknown_text_column, "--text-column: column 'review' not found"),
    (_unparseable_csv, "cannot read it as csv"),
    (_nested_parquet, "a column holds values kiln cannot analyse"),
    (_decompression_bomb, "huge.png"),
    (_unwritable_output, "--output"),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, make, says: str) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # Pillow refuses images over twice this
    code = main(["inspect", *make(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert says in captured.err and captured.err.startswith("kiln: ")
    assert "Traceback" not in captured.out + captured.err


def test_a_truncated_image_is_not_silently_accepted(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", per_class=2)
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(OSError):
        Image.open(root / "dog" / "cut.png").load()  # Pillow itself refuses it
    assert main(["inspect", manifest(tmp_path, {"source": str(root)})]) == 2


def test_a_pvc_source_is_read_under_the_pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_table(tmp_path / "claim" / "data" / "t.csv", rows=40)
    monkeypatch.setenv("KILN_PVC_ROOT", str(tmp_path))
    assert main(["inspect", manifest(tmp_path, {"source": "pvc://claim/data/t.csv"})]) == 0
    assert "kiln inspect: pvc://claim/data/t.csv" in capsys.readouterr().out
