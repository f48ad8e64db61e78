"""A user's files are never destroyed or silently replaced, and every error is one line (issue #18).

One test per reproduced case: the command's output path is checked before any work (never an
input, the format's suffix, a writable folder), results are written atomically, earlier runs
are kept, and bad or hostile input gets one line naming the file and what was expected.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pocketcnn
from pocketcnn.artifacts.checkpoint import save_checkpoint
from pocketcnn.cli import cli
from pocketcnn.data.spec import DataSpec
from pocketcnn.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
KWARGS = {"num_classes": 10, "in_chans": 1, "small_input": True}
DATA = DataSpec("mnist", 10, 1, 28, (0.2860,), (0.3530,), tuple(str(i) for i in range(10)))


def one_line_error(res) -> str:
    """The CLI's error output: exactly one line, no traceback."""
    assert res.exit_code not in (0, None), res.output
    text = res.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


@pytest.fixture
def ckpt(tmp_path) -> Path:
    model = pocketcnn.create_model("squeezenet1_1", **KWARGS)
    return save_checkpoint(tmp_path / "A.pt", {"model": "squeezenet1_1", "model_kwargs": KWARGS,
                                               "state_dict": model.state_dict(), "data": DATA.to_dict()})


@pytest.fixture
def run(tiny_data, tmp_path, cli_runner) -> Path:
    """A finished 1-epoch training run (real Fashion-MNIST images in CI)."""
    out = tmp_path / "run"
    res = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data,
                                  "--epochs", "1", "--batch-size", "64", "--train-samples", "128",
                                  "--test-samples", "40", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return out


def test_0_make_tests_pytest_passes_without_executorch(tmp_path):
    """`make test`'s own pytest invocation where ExecuTorch is not installed: its tests skip, none fails."""
    sys.path.insert(0, str(ROOT / "tests" / "light"))
    try:
        from prepare import blocked_env
    finally:
        sys.path.pop(0)
    env = blocked_env(tmp_path / "block", modules=("executorch",))
    env.pop("PYTEST_ADDOPTS", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                          "tests/test_export.py", "tests/test_predict.py", "-k", "pte or unreadable"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "skipped" in res.stdout and "ExecuTorch" in res.stdout and " failed" not in res.stdout


def test_1_export_never_writes_over_its_input_nor_leaves_a_wrong_file(ckpt, tmp_path, cli_runner):
    before = ckpt.read_bytes()
    text = one_line_error(cli_runner.invoke(cli, ["export", str(ckpt), "--out", str(ckpt)]))
    assert "must end in .onnx" in text and ckpt.read_bytes() == before
    text = one_line_error(cli_runner.invoke(cli, ["export", str(ckpt), "--format", "pt2", "--out", str(ckpt)]))
    assert ckpt.read_bytes() == before
    text = one_line_error(cli_runner.invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "d.txt")]))
    assert "d.txt" in text and ".onnx" in text and not (tmp_path / "d.txt").exists()
    same = tmp_path / "same.onnx"
    same.write_bytes(b"not yet")  # an input named like the output: refused, not replaced
    from pocketcnn.fileio import check_output
    from pocketcnn.errors import OutputError

    with pytest.raises(OutputError, match="would replace the input"):
        check_output(same, inputs=[same], suffixes=[".onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.pt", "same.onnx"]  # no temporary left behind


def test_1_a_failed_verification_keeps_the_target_untouched(ckpt, tmp_path, monkeypatch):
    import pocketcnn.export.exporter as X
    from pocketcnn.artifacts.source import load_model_source
    from pocketcnn.errors import ExportError

    target = tmp_path / "m.onnx"
    target.write_bytes(b"an earlier good export")
    real = X.verify_export
    monkeypatch.setattr(X, "verify_export", lambda *a, **k: real(*a, **{**k, "atol": -1.0}))  # nothing passes
    with pytest.raises(ExportError, match="not written.*m.unverified.onnx"):
        X.export_model(load_model_source(ckpt), target, verify_n=2)
    assert target.read_bytes() == b"an earlier good export" and (tmp_path / "m.unverified.onnx").is_file()


def test_2_a_second_training_run_never_replaces_the_first(run, tiny_data, tmp_path, cli_runner, monkeypatch):
    best = (run / "best.pt").read_bytes()
    args = ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data, "--epochs", "1",
            "--batch-size", "64", "--train-samples", "64", "--test-samples", "20", "-q"]
    text = one_line_error(cli_runner.invoke(cli, [*args, "--out", str(run)]))
    assert "already holds a training run" in text and "--force" in text and "--resume" in text
    assert (run / "best.pt").read_bytes() == best
    # without --out, the default folder runs/MODEL is kept and the run goes to runs/MODEL-2
    monkeypatch.chdir(tmp_path)
    assert cli_runner.invoke(cli, args).exit_code == 0
    first = (tmp_path / "runs" / "squeezenet1_1" / "best.pt").read_bytes()
    res = cli_runner.invoke(cli, args)
    assert res.exit_code == 0 and "runs/squeezenet1_1-2" in res.stderr
    assert (tmp_path / "runs" / "squeezenet1_1" / "best.pt").read_bytes() == first
    assert (tmp_path / "runs" / "squeezenet1_1-2" / "best.pt").is_file()
    assert cli_runner.invoke(cli, [*args, "--out", str(run), "--force"]).exit_code == 0  # told: replaced


def test_3_compress_and_quantize_refuse_to_replace_their_source(run, cli_runner):
    src = run / "last.pt"
    before = src.read_bytes()
    text = one_line_error(cli_runner.invoke(cli, ["compress", str(src), "--out", str(src)]))
    assert "must end in .pcz" in text
    text = one_line_error(cli_runner.invoke(cli, ["quantize", str(src), "--backend", "torch", "--out", str(src)]))
    assert "would replace the input" in text
    pcz = run / "x.pcz"
    text = one_line_error(cli_runner.invoke(cli, ["quantize", str(src), "--out", str(pcz)]))
    assert "must end in .onnx" in text
    assert src.read_bytes() == before


def test_4_unwritable_outputs_fail_before_the_work(run, tmp_path, cli_runner, monkeypatch, tiny_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file, so nothing can be created below it")
    import pocketcnn.compress.pipeline as pipeline

    monkeypatch.setattr(pipeline, "deep_compress", lambda *a, **k: pytest.fail("compress worked before checking"))
    text = one_line_error(cli_runner.invoke(cli, ["compress", str(run / "last.pt"), "--out", str(blocker / "x.pcz")]))
    assert "cannot write" in text and "a-file" in text
    text = one_line_error(cli_runner.invoke(cli, ["eval", str(run / "last.pt"), "--out", str(blocker / "ev")]))
    assert "cannot write the evaluation report" in text
    text = one_line_error(cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist",
                                                  "--data-dir", tiny_data, "--out", str(blocker / "run")]))
    assert "cannot write the training run" in text
    # eval in a writable folder prints its results and writes its files
    res = cli_runner.invoke(cli, ["eval", str(run / "last.pt"), "--out", str(tmp_path / "ev"), "--json"])
    assert res.exit_code == 0 and (tmp_path / "ev" / "eval.json").is_file()


def test_5_alexnet_below_its_minimum_input_names_the_way_out():
    model = pocketcnn.create_model("alexnet", num_classes=10, in_chans=1).eval()
    with pytest.raises(ConfigError, match=r"at least 63x63 pixels, received 28x28.*small_input=True"):
        model(torch.zeros(1, 1, 28, 28))
    small = pocketcnn.create_model("alexnet", num_classes=10, in_chans=1, small_input=True).eval()
    assert small(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ConfigError, match="SqueezeNet needs inputs of at least 17x17"):
        pocketcnn.create_model("squeezenet1_1").eval()(torch.zeros(1, 3, 16, 16))


def test_6_subsets_larger_than_the_data_are_refused(tiny_data, tmp_path, cli_runner):
    base = ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data, "--out", str(tmp_path / "r")]
    text = one_line_error(cli_runner.invoke(cli, [*base, "--train-samples", "100000"]))
    assert "train_samples=100000 is more than the 320 training images" in text
    text = one_line_error(cli_runner.invoke(cli, [*base, "--test-samples", "20000"]))
    assert "test_samples=20000 is more than the 160 test images" in text
    assert not (tmp_path / "r" / "config.json").exists()  # nothing recorded for a run that did not happen


def test_7_resuming_another_models_checkpoint_says_so(run, cli_runner):
    text = one_line_error(cli_runner.invoke(cli, ["train", "--model", "mobilenet_v3_small", "--resume",
                                                  str(run / "last.pt")]))
    assert "a checkpoint of squeezenet1_1, not mobilenet_v3_small" in text and "bn_momentum" not in text


def test_8_wrong_file_kinds_are_named(run, tmp_path, cli_runner):
    png, onnx_file, folder = tmp_path / "p.png", tmp_path / "m.onnx", tmp_path / "folder"
    from PIL import Image

    Image.new("L", (8, 8)).save(png)
    folder.mkdir()
    cli_runner.invoke(cli, ["export", str(run / "last.pt"), "--out", str(onnx_file), "--verify-samples", "2"])
    for bad, kind in ((png, "PNG image"), (onnx_file, "ONNX model")):
        for cmd in (["eval", str(bad)], ["compress", str(bad)], ["train", "--resume", str(bad)]):
            text = one_line_error(cli_runner.invoke(cli, cmd))
            assert "expected a pocketcnn checkpoint" in text and kind in text and "weights_only" not in text, text
    for cmd in (["predict", str(folder), str(png)], ["export", str(folder)], ["quantize", str(folder)]):
        assert "is a folder" in one_line_error(cli_runner.invoke(cli, cmd))
    res = cli_runner.invoke(cli, ["eval", str(folder)])  # a click path argument: its usage error
    assert res.exit_code == 2 and "is a directory" in res.output and "Traceback" not in res.output


def test_8_demo_says_which_test_images_it_ranked_on():
    from pocketcnn.workflows.demo import _split_words

    assert _split_words(200) == "a balanced subset of 200 test images"
    assert _split_words(10_000) == "the full 10,000-image test split"


def test_9_ctrl_c_during_start_up_is_one_line_and_exit_130():
    # a user's terminal delivers Ctrl-C; a job started in the background of a script inherits SIGINT
    # ignored (and Python then keeps it ignored), so the child gets the default disposition back
    proc = subprocess.Popen([sys.executable, "-m", "pocketcnn", "models"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.3)  # inside the start-up: PyTorch takes seconds to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_10_an_impossible_sparsity_names_what_is_reachable():
    from pocketcnn.compress.prune import balanced_sparsities, prunable_layers

    model = pocketcnn.create_model("squeezenet1_1", **KWARGS)
    layers = list(prunable_layers(model))
    fixed = dict.fromkeys(layers[:-3], 0.0)  # all but three layers held dense by the scan
    with pytest.raises(ConfigError, match=r"at most --sparsity 0\.\d\d is reachable.*--tolerance.*--probe-samples 0"):
        balanced_sparsities(model, 0.67, fixed)


def test_11_hostile_model_records_are_refused_before_anything_large(tmp_path, cli_runner):
    model = pocketcnn.create_model("mobilenet_v1", **KWARGS)
    path = save_checkpoint(tmp_path / "evil.pt", {"model": "mobilenet_v1", "model_kwargs": {**KWARGS, "width_mult": 200},
                                                  "state_dict": model.state_dict(), "data": DATA.to_dict()})
    t0 = time.perf_counter()
    text = one_line_error(cli_runner.invoke(cli, ["predict", str(path), str(tmp_path / "none.png")]))
    assert "parameters; refused" in text and time.perf_counter() - t0 < 20
    shapes = save_checkpoint(tmp_path / "shapes.pt", {"model": "mobilenet_v1", "model_kwargs": {**KWARGS, "width_mult": 0.5},
                                                     "state_dict": model.state_dict(), "data": DATA.to_dict()})
    with pytest.raises(CheckpointError, match=r"weights do not fit model 'mobilenet_v1': .* in the file, .* in the model"):
        from pocketcnn.artifacts.checkpoint import model_from_checkpoint

        model_from_checkpoint(shapes)


def test_11_hostile_pcz_header_is_refused(tmp_path):
    from pocketcnn.artifacts.pcz import frame, load_pcz

    path = tmp_path / "evil.pcz"
    path.write_bytes(frame("mobilenet_v1", {"width_mult": 200}, {}, [], []))
    with pytest.raises(CheckpointError, match="parameters; refused"):
        load_pcz(path)


def test_results_and_exports_are_readable_by_others(ckpt, tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the renamed file gets the umask's permissions,
    so a served model is readable by the container's own user."""
    from pocketcnn.fileio import atomic_write_text

    path = atomic_write_text(tmp_path / "r.json", json.dumps({}))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
