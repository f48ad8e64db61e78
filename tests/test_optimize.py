"""pocketcnn.export.optimize: same outputs as the original for every registered model, no batch norm left."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pocketcnn
from pocketcnn.errors import ConfigError
from pocketcnn.export.optimize import OnnxRuntimeModule, fold_batchnorm, optimize

SIZE = (3, 64, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    """One PyTorch thread: on a shared 2-core machine, spinning OpenMP threads slow tests 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str) -> nn.Module:
    """A registered model with non-trivial batch norm statistics, so folding has something to get wrong."""
    torch.manual_seed(0)
    kwargs = {"small_input": True} if "small_input" in pocketcnn.model_config(name).accepted_kwargs() else {}
    model = pocketcnn.create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.2)
    return model.eval()


def _batch(n: int = 2) -> torch.Tensor:
    return torch.randn(n, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", pocketcnn.list_models())
def test_optimize_keeps_outputs_and_removes_batchnorm(name):
    model = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = _batch()
    with torch.inference_mode():
        ref = model(x)
        assert ref.abs().max() > 1e-3  # a vacuous comparison would prove nothing
        frozen = optimize(model, example_input=SIZE)
        eager = optimize(model, example_input=SIZE, freeze=False)
        out_frozen, out_eager = frozen(x), eager(x)
    assert isinstance(frozen, torch.jit.ScriptModule)
    assert "batch_norm" not in str(frozen.graph)
    assert type(eager) is type(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in eager.modules())
    assert (out_frozen - ref).abs().max().item() <= 1e-4
    assert (out_eager - ref).abs().max().item() <= 1e-4
    # the caller's model is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_optimize_keeps_training_flag_and_other_batch_sizes():
    model = _model("mobilenet_v3_small").train()
    opt = optimize(model, example_input=SIZE)
    assert model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = _batch(5)
    with torch.inference_mode():
        assert (opt(x) - model.eval()(x)).abs().max().item() <= 1e-4  # traced at batch 1, run at 5


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v2"])
def test_onnxruntime_backend_matches(name):
    model = _model(name)
    opt = optimize(model, backend="onnxruntime", example_input=SIZE, threads=2, shards=2)
    assert isinstance(opt, OnnxRuntimeModule) and "ONNX Runtime" in opt.note
    with torch.inference_mode():
        for n in (1, 11):  # 1: one session; 11: two single-thread sessions, each 4 images at a time
            x = _batch(n)
            out = opt(x)
            assert out.shape == (n, model.num_classes)
            assert (out - model(x)).abs().max().item() <= 1e-4
    assert isinstance(optimize(model, backend="auto", example_input=SIZE), nn.Module)


def test_fold_batchnorm_is_generic_and_safe():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4),
                        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    seq.eval()
    assert fold_batchnorm(seq) == 1  # only conv -> bn with running statistics; a bn after ReLU stays
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[3], nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="training mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_optimize_user_errors_name_the_value():
    model = _model("squeezenet1_1")
    with pytest.raises(ConfigError, match="backend='tensorrt'"):
        optimize(model, backend="tensorrt")
    with pytest.raises(ConfigError, match=r"\(3, 64\)"):
        optimize(model, example_input=(3, 64))
    with pytest.raises(ConfigError, match="compile=True"):
        optimize(model, backend="onnxruntime", compile=True)
    with pytest.raises(ConfigError, match="threads"):
        optimize(model, backend="torch", threads=2)
    with pytest.raises(ConfigError, match="str"):
        optimize("squeezenet1_1")  # type: ignore[arg-type]
