"""`pocketcnn models`, `inspect`, `compare`, and how the CLI reports user errors."""
import json
import subprocess
import sys

import pytest

from pocketcnn.cli import cli


def test_models_json(cli_runner):
    r = cli_runner.invoke(cli, ["models", "squeezenet*", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(x["model"], x["params"]) for x in rows] == [("squeezenet1_0", 1_248_424), ("squeezenet1_1", 1_235_496)]
    assert rows[0]["torchvision"] == "squeezenet1_0" and rows[0]["macs"] == pytest.approx(818.9e6, rel=0.005)


def test_models_table_lists_every_model(cli_runner):
    from pocketcnn import list_models

    r = cli_runner.invoke(cli, ["models"])
    assert r.exit_code == 0
    assert all(name in r.output for name in list_models())


def test_inspect_json_schema_and_paper_numbers(cli_runner):
    r = cli_runner.invoke(cli, ["inspect", "mobilenet_v1", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # exactly one JSON object
    assert set(d) == {"model", "input_size", "params", "macs", "size_mb", "layers", "by_type"}
    assert d["input_size"] == [3, 224, 224] and d["params"] == 4_231_976
    assert d["macs"] / 1e6 == pytest.approx(568.7, rel=0.005)
    assert set(d["layers"][0]) == {"name", "type", "out_shape", "params", "macs"}
    assert set(d["by_type"]) == {"conv1x1", "conv_dw", "conv_full", "linear", "other"}
    assert set(d["by_type"]["conv1x1"]) == {"params", "macs", "params_pct", "macs_pct"}
    assert d["by_type"]["conv1x1"]["macs_pct"] == pytest.approx(94.86, abs=0.01)


def test_inspect_options(cli_runner):
    r = cli_runner.invoke(cli, ["inspect", "mobilenet_v1", "--width", "0.5", "--input-size", "160", "--in-chans", "1",
                                "--num-classes", "10", "--json"])
    d = json.loads(r.stdout)
    assert d["input_size"] == [1, 160, 160]
    r = cli_runner.invoke(cli, ["inspect", "squeezenet1_1"])
    assert r.exit_code == 0 and "features.3.expand3x3" in r.output and "share by layer type" in r.output


def test_compare_squeezenet_is_fifty_times_smaller(cli_runner):
    r = cli_runner.invoke(cli, ["compare", "alexnet", "squeezenet1_0", "--json"])
    assert r.exit_code == 0
    rows = {x["model"]: x for x in json.loads(r.stdout)}
    assert rows["squeezenet1_0"]["params_vs_alexnet"] == pytest.approx(48.94, abs=0.01)
    assert rows["alexnet"]["params_vs_alexnet"] == 1.0


@pytest.mark.parametrize("args, needle", [
    (["inspect", "squeezenet1_2"], "squeezenet1_2"),
    (["compare", "alexnet", "mobilenet_v4"], "mobilenet_v4"),
    (["inspect", "mobilenet_v1", "--width", "-1"], "width_mult=-1"),
    (["inspect", "alexnet", "--input-size", "16"], "does not fit"),
])
def test_bad_input_is_one_line_without_traceback(cli_runner, args, needle):
    r = cli_runner.invoke(cli, args)
    assert r.exit_code != 0
    assert needle in r.output and "Traceback" not in r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)


def test_console_script_bad_name_lists_close_matches():
    r = subprocess.run([sys.executable, "-m", "pocketcnn", "inspect", "mobilenet_v2x"], capture_output=True, text=True)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and "Did you mean: mobilenet_v2" in err[0]
    assert "Traceback" not in r.stderr


def test_every_command_has_help(cli_runner):
    r = cli_runner.invoke(cli, ["--help"])
    commands = [line.split()[0] for line in r.output.split("Commands:")[1].strip().splitlines()]
    assert {"models", "inspect", "compare", "train", "eval", "demo", "compress"} <= set(commands)
    for c in commands:
        h = cli_runner.invoke(cli, [c, "--help"])
        assert h.exit_code == 0 and "Usage:" in h.output, c
