"""`pocketcnn compress` end to end on a checkpoint trained on tiny real data."""
import json

import torch

from pocketcnn.cli import cli
from pocketcnn.artifacts.pcz import load_pcz
from pocketcnn.artifacts.checkpoint import model_from_checkpoint


def model_layers(run):
    from pocketcnn.compress.prune import prunable_layers

    return prunable_layers(model_from_checkpoint(run / "last.pt")).items()


def test_compress_checkpoint(tiny_data, tmp_path, cli_runner):
    run = tmp_path / "run"
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data,
                                "--epochs", "1", "--batch-size", "64", "--train-samples", "128", "--optimizer", "adamw",
                                "--lr", "0.002", "--out", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "net.pcz"
    r = cli_runner.invoke(cli, ["compress", str(run / "last.pt"), "--finetune-epochs", "1", "--prune-steps", "2", "--test-samples", "100",
                                "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [s["name"] for s in d["stages"]] == ["dense", "pruned", "quantized", "coded"]
    assert d["file_bytes"] == out.stat().st_size
    assert d["bits_per_param"] < 4.0 and abs(d["sparsity"] - 0.67) < 0.01
    assert all(s["accuracy"] is not None for s in d["stages"])
    assert [round(r["sparsity"], 2) for r in d["prune_rounds"]] == [0.43, 0.67]  # 1 - 0.33 ** 0.5, then 0.67
    assert d["probe_samples"] == 2000 and set(d["layer_sparsity"]) == {n for n, _ in model_layers(run)}
    model, meta = load_pcz(out)
    assert meta["data"]["num_classes"] == 10
    dense = model_from_checkpoint(run / "last.pt")
    with torch.no_grad():
        y = model(torch.zeros(1, 1, 28, 28))
    assert y.shape == (1, 10)
    # at most 2**6 distinct values per compressed conv weight
    assert len(torch.unique(model.features[3].expand3x3.weight)) <= 64
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in dense.parameters())


def test_compress_rejects_bad_file(tmp_path, cli_runner):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"junk")
    r = cli_runner.invoke(cli, ["compress", str(bad)])
    assert r.exit_code == 1 and "x.pt" in r.output and "Traceback" not in r.output
