"""pocketcnn.bench and ``pocketcnn bench``: sane records, no speed assertions."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import pocketcnn
from pocketcnn.bench import (RECORD_KEYS, BenchConfig, BenchResult, build_runtime, matmul_peak_gflops, measure, measure_many,
                             parse_runtimes)
from pocketcnn.bench.run import _with_ratios
from pocketcnn.bench.cpu import cpu_info
from pocketcnn.cli import cli
from pocketcnn.errors import ConfigError

SIZE = (3, 32, 32)


def _check(r: BenchResult, batch: int) -> None:
    assert r.batch_size == batch and r.runs >= 3
    assert 0 < r.min_ms <= r.median_ms
    assert math.isclose(r.images_per_s, batch / (r.median_ms / 1e3), rel_tol=1e-9)
    assert r.peak_mem_mb is None or r.peak_mem_mb >= 0


def test_measure_module_record_is_consistent():
    model = pocketcnn.create_model("squeezenet1_1", num_classes=10, small_input=True)
    r = measure(model, batch_size=2, input_size=SIZE, threads=1, warmup=1, min_time=0.0, repeats=3,
                peak_gflops=100.0, runtime="eager")
    _check(r, 2)
    macs = pocketcnn.profile(model, SIZE).macs
    assert r.model == "squeezenet1_1" and r.runtime == "eager" and r.threads == 1
    assert math.isclose(r.gflops, 2 * macs * r.images_per_s / 1e9, rel_tol=1e-9)
    assert math.isclose(r.peak_fraction, r.gflops / 100.0, rel_tol=1e-9)
    assert r.vs_torchvision_eager is None and r.vs_torchvision_onnxruntime is None
    assert set(RECORD_KEYS) <= set(r.to_dict())


def test_measure_callable_without_macs_has_no_gflops():
    calls = []
    r = measure(lambda x: calls.append(x.shape), batch_size=3, input_size=SIZE, threads=1, warmup=2,
                min_time=0.0, repeats=4, model_name="noop")
    _check(r, 3)
    assert len(calls) == 2 + r.runs and calls[0] == (3, *SIZE)
    assert r.gflops is None and r.peak_fraction is None and r.model == "noop"


def test_measure_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="batch_size=0"):
        measure(lambda x: x, batch_size=0)
    with pytest.raises(ConfigError, match=r"\[3, 32\]"):
        measure(lambda x: x, input_size=[3, 32])
    with pytest.raises(ConfigError, match="threads=-1"):
        measure(lambda x: x, threads=-1)


def test_bench_config_names_a_bad_batch_size():
    with pytest.raises(ConfigError, match=r"batch_sizes\[1\]=0"):
        BenchConfig(models=("squeezenet1_1",), batch_sizes=(1, 0))
    with pytest.raises(ConfigError, match=r"received \[\]"):
        BenchConfig(models=("squeezenet1_1",), batch_sizes=())


def test_matmul_peak_is_positive():
    assert matmul_peak_gflops(1, n=128, min_time=0.0) > 0


def test_runtimes_are_validated():
    assert parse_runtimes("eager, onnxruntime,eager") == ("eager", "onnxruntime")
    with pytest.raises(ConfigError, match="Valid runtimes: eager, .*onnxruntime") as exc:
        parse_runtimes("eager,tensorrt")
    assert "'tensorrt'" in str(exc.value) and "\n" not in str(exc.value)


def test_ratios_divide_by_the_same_model_and_batch_reference():
    def rec(runtime, ips, bs=1):
        return BenchResult("m", runtime, bs, 1e3 * bs / ips, 1.0, ips, None, None, None)

    out = _with_ratios([rec("onnxruntime", 300.0), rec("torchvision-eager", 100.0),
                        rec("torchvision-onnxruntime", 200.0), rec("onnxruntime", 50.0, bs=32)])
    assert out[0].vs_torchvision_eager == 3.0 and out[0].vs_torchvision_onnxruntime == 1.5
    assert out[1].vs_torchvision_eager == 1.0
    assert out[3].vs_torchvision_eager is None  # no reference at batch 32


def test_cli_bench_json_records():
    result = CliRunner().invoke(cli, ["bench", "squeezenet1_1", "--runtimes", "eager,onnxruntime",
                                      "--batch-sizes", "1", "--input-size", "64", "--quick", "--json",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["runtime"] for r in records] == ["eager", "onnxruntime"]
    for r in records:
        assert set(RECORD_KEYS) <= set(r)
        assert r["model"] == "squeezenet1_1" and r["batch_size"] == 1
        assert 0 < r["min_ms"] <= r["median_ms"] and r["images_per_s"] > 0
        assert r["gflops"] > 0 and r["peak_fraction"] > 0
        assert r["vs_torchvision_eager"] is None
        assert r["cpu"] == cpu_info().to_dict() and isinstance(r["cpu"]["int8_dot"], bool)


def test_cli_bench_reference_table_and_plot(tmp_path):
    png = tmp_path / "bench.png"
    result = CliRunner().invoke(cli, ["bench", "squeezenet1_1", "--runtimes", "onnxruntime", "--batch-sizes", "2",
                                      "--input-size", "32", "--threads", "1", "--reference", "--quick",
                                      "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "torchvision-onnxruntime" in result.stdout and "vs tv ORT" in result.stdout
    assert cpu_info().summary().split(":")[0] in result.stdout  # the header names the CPU
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_bad_runtime_is_one_line():
    result = CliRunner().invoke(cli, ["bench", "squeezenet1_1", "--runtimes", "eager,fast", "--quick"])
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'fast'" in lines[0] and "Valid runtimes: eager" in lines[0]
    assert "onnxruntime" in lines[0]


def test_threads_are_restored():
    before = torch.get_num_threads()
    measure(lambda x: x, batch_size=1, input_size=SIZE, threads=1, warmup=0, min_time=0.0, repeats=1)
    assert torch.get_num_threads() == before


def test_measure_many_interleaves_and_drops_a_failing_runtime():
    calls = []

    def broken(x):
        raise RuntimeError("no kernel for this shape\nsecond line")

    errors = {}
    out = measure_many({"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b"), "bad": broken},
                       batch_size=1, input_size=SIZE, threads=1, warmup=1, min_time=0.0, repeats=3,
                       model_name="m", errors=errors)
    assert [r.runtime for r in out] == ["a", "b"] and all(r.runs == 3 for r in out)
    assert set(errors) == {"bad"}
    rounds = [calls[i:i + 2] for i in range(2, len(calls), 2)]  # after the warm-up: one visit each per round
    assert len(rounds) == 3 and all(sorted(r) == ["a", "b"] for r in rounds)


@pytest.mark.parametrize("runtime", ["onnxruntime-int8", "torch-int8"])
def test_int8_runtimes_run_when_available(runtime, tmp_path):
    pytest.importorskip("pocketcnn.compress.quantize")
    model = pocketcnn.create_model("squeezenet1_1", small_input=True).eval()
    rt = build_runtime(runtime, model, input_size=SIZE, threads=1, workdir=tmp_path)
    r = measure(rt.fn, batch_size=2, input_size=SIZE, threads=1, warmup=1, min_time=0.0, repeats=3,
                macs=pocketcnn.profile(model, SIZE).macs, peak_gflops=100.0, runtime=runtime)
    _check(r, 2)
    with torch.inference_mode():
        assert tuple(rt.fn(torch.randn(2, *SIZE)).shape) == (2, 1000)


EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni
"""
XEON = """model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8 avx_vnni
"""
GRAVITON = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 asimddp i8mm
"""


@pytest.mark.parametrize("text, features, int8_dot", [
    (EPYC, ("AVX2",), False),
    (XEON, ("AVX2", "AVX-512", "AVX512-VNNI", "AVX-VNNI", "AVX512-BF16", "AMX"), True),
    (GRAVITON, ("NEON", "DOTPROD", "I8MM"), True),
    ("", (), False),
], ids=["avx2-only", "avx512-vnni-amx", "arm-dotprod", "unknown"])
def test_cpu_features_from_cpuinfo(tmp_path, monkeypatch, text, features, int8_dot):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    info = cpu_info(path)
    assert info.features == features and info.int8_dot is int8_dot and info.overrides == {}
    if text is EPYC:
        assert info.model == "AMD EPYC 7B12"
        assert info.summary().startswith("AMD EPYC 7B12, ") and "AVX2" in info.summary()
        assert "no int8 dot product" in info.summary()


def test_cpu_overrides_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    path = tmp_path / "cpuinfo"
    path.write_text(XEON)
    info = cpu_info(path)
    assert info.overrides == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert info.summary().endswith("limited by ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2")
    assert info.to_dict()["int8_dot"] is True
