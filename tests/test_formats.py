"""The format table (artifacts/formats.py) is the one place that knows which file is which."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pocketcnn.artifacts.formats import BY_NAME, EXPORT_FORMATS, FORMATS, export_suffix, format_of, suffixes
from pocketcnn.errors import CheckpointError, ExportError, PocketCNNError

SRC = Path(__file__).resolve().parents[1] / "src" / "pocketcnn"
TABLE = SRC / "artifacts" / "formats.py"
MODEL_SUFFIXES = {s for f in FORMATS for s in f.suffixes if s.startswith(".")}


def test_every_suffix_belongs_to_one_format():
    seen = [s for f in FORMATS for s in f.suffixes]
    assert len(seen) == len(set(seen))
    for f in FORMATS:
        for s in f.suffixes:
            if s.startswith("."):
                assert format_of(f"dir/model{s}") is f and format_of(f"MODEL{s.upper()}") is f
    assert format_of("model.int8.onnx") is BY_NAME["onnx"] and format_of("model.txt") is None


def test_no_other_module_spells_out_a_model_file_suffix():
    """`grep -rn '".tflite"' src/pocketcnn` finds one module: a string constant that is a model-file suffix
    appears only in the table (docstrings and messages may name formats in prose)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == TABLE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in MODEL_SUFFIXES:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not found, "suffixes outside artifacts/formats.py:\n" + "\n".join(found)


def test_the_suffix_guard_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "pocketcnn" / "runtime"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text('SUFFIX = ".tflite"\n')
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "pocketcnn")
    with pytest.raises(AssertionError, match=r"runtime/x.py:1 '.tflite'"):
        test_no_other_module_spells_out_a_model_file_suffix()


def test_the_cli_choices_and_defaults_come_from_the_table():
    import click

    from pocketcnn.cli.export import export
    from pocketcnn.workflows.predict import MODEL_SUFFIXES as PREDICTS

    fmt_option = next(p for p in export.params if p.name == "fmt")
    assert isinstance(fmt_option.type, click.Choice) and tuple(fmt_option.type.choices) == EXPORT_FORMATS
    assert set(EXPORT_FORMATS) == {"onnx", "pt2", "pte", "tflite", "coreml", "web"}
    assert export_suffix("tflite", int8=True) == ".int8.tflite" and export_suffix("coreml") == ".mlpackage"
    assert set(PREDICTS) == {".pt", ".pth", ".pcz", ".onnx", ".pt2", ".pte", ".tflite"}
    assert set(suffixes(light=True)) == {".onnx", ".tflite"}
    assert all(BY_NAME[n].install().startswith("pip install 'pocketcnn[") for n in EXPORT_FORMATS)
    assert BY_NAME["tflite"].install() == "pip install 'pocketcnn[litert]'"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.runner], ids=lambda f: f.name)
def test_every_runner_the_table_names_exists_and_refuses_a_missing_file(fmt, tmp_path):
    """Each row's runner imports and says the file is missing (not 'unknown format')."""
    from pocketcnn.runtime.loader import open_runtime

    with pytest.raises(PocketCNNError) as exc:
        open_runtime(tmp_path / f"missing{fmt.suffix}")
    assert "unknown" not in str(exc.value) and "missing" in str(exc.value)


def test_unknown_suffixes_are_refused_with_the_known_ones(tmp_path):
    from pocketcnn.runtime.loader import open_runtime
    from pocketcnn.runtime.predictor import open_model
    from pocketcnn.workflows.predict import load_predictor

    (tmp_path / "m.xyz").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"unknown exported format '.xyz' \(expected .onnx, .pt2, .pte, .tflite\)"):
        open_runtime(tmp_path / "m.xyz")
    with pytest.raises(CheckpointError, match=r"the light runtime opens .onnx and .tflite files"):
        open_model(tmp_path / "m.xyz")
    with pytest.raises(CheckpointError, match=r"an ExecuTorch program, which the light runtime does not open"):
        open_model(tmp_path / "m.pte")
    with pytest.raises(CheckpointError, match=r"a Core ML package, which runs only on Apple systems"):
        open_model(tmp_path / "m.mlpackage")
    with pytest.raises(CheckpointError, match=r"unknown model file type '.xyz' \(expected one of .pt, .pth, .pcz"):
        load_predictor(tmp_path / "m.xyz")
