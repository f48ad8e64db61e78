"""Deep Compression: pruning, weight sharing, Huffman coding, the .pcz file, the pipeline."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import pocketcnn
from pocketcnn.compress.cluster import SharedWeights, cluster_weights, kmeans_1d
from pocketcnn.artifacts.pcz import MAX_CODE_LEN, from_entries, huffman_decode, load_pcz
from pocketcnn.compress.coding import encode_pcz, huffman_encode, save_pcz, to_entries
from pocketcnn.compress.pipeline import deep_compress, prune_schedule, sensitivity_scan
from pocketcnn.compress.prune import MaskGuard, balanced_sparsities, magnitude_prune, prunable_layers
from pocketcnn.errors import CheckpointError, ConfigError


def small_squeezenet() -> nn.Module:
    """47,706 parameters: narrow Fire modules keep the tests fast."""
    return pocketcnn.create_model("squeezenet1_1", num_classes=10, in_chans=1, small_input=True, base_e=32, incr_e=32)


def small_mobilenet() -> nn.Module:
    """BatchNorm (with int64 num_batches_tracked), depthwise convs and nn.Linear layers."""
    model = pocketcnn.create_model("mobilenet_v3_small", num_classes=10, width_mult=0.25, small_input=True)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))  # non-trivial BN running statistics
    return model


def sgd_steps(model: nn.Module, after_step, steps: int = 3, in_chans: int = 1) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(torch.randn(4, in_chans, 16, 16)), torch.randint(0, 10, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_step()


def compressed(model: nn.Module, sparsity: float = 0.5, bits: int = 4, **kw):
    masks = magnitude_prune(model, sparsity)
    return masks, cluster_weights(model, masks, bits=bits, **kw)


# ---- pruning ---------------------------------------------------------------------------------
def test_prune_per_layer_hits_sparsity_and_drops_the_smallest():
    model = small_squeezenet()
    masks = magnitude_prune(model, 0.33)
    assert set(masks) == set(prunable_layers(model)) and all(k.endswith(".weight") for k in masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        w = params[name].detach()
        assert abs(int((~mask).sum()) - 0.33 * w.numel()) <= 1, name
        assert torch.all(w[~mask] == 0)
        assert w[mask].abs().min() >= w[~mask].abs().max() or (~mask).sum() == 0


def test_prune_global_scope_uses_one_threshold():
    model = small_squeezenet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = magnitude_prune(model, 0.6, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int((~m).sum()) for m in masks.values()) - 0.6 * total) <= 1
    kept = torch.cat([before[n][m].abs() for n, m in masks.items()])
    pruned = torch.cat([before[n][~m].abs() for n, m in masks.items()])
    assert kept.min() >= pruned.max()
    assert len({round(float((~m).float().mean()), 2) for m in masks.values()}) > 1  # layers differ


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, "0.5"])
def test_prune_rejects_bad_sparsity(bad):
    with pytest.raises(ConfigError, match=f"sparsity={bad!r}"):
        magnitude_prune(small_squeezenet(), bad)


def test_prune_rejects_bad_scope():
    with pytest.raises(ConfigError, match="scope='model'"):
        magnitude_prune(small_squeezenet(), 0.5, scope="model")


def test_prune_schedule_removes_the_same_share_each_round():
    sched = prune_schedule(0.67, 3)
    assert sched[-1] == 0.67 and sched == sorted(sched)
    kept = [1.0] + [1 - s for s in sched]
    shares = [b / a for a, b in zip(kept, kept[1:])]
    assert shares == pytest.approx([0.33 ** (1 / 3)] * 3)  # 69.1% of the survivors kept each round
    assert prune_schedule(0.5, 1) == [0.5]
    with pytest.raises(ConfigError, match="prune_steps=0"):
        prune_schedule(0.5, 0)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_with_prior_masks_only_removes_more(scope):
    model = small_squeezenet()
    first = magnitude_prune(model, 0.3, scope=scope)
    params = dict(model.named_parameters())
    with torch.no_grad():  # fine-tuning moves the survivors: some now smaller than the pruned were
        for name, mask in first.items():
            params[name].mul_(torch.rand_like(params[name]) * mask)
    second = magnitude_prune(model, 0.6, scope=scope, prior=first)
    total = sum(m.numel() for m in second.values())
    assert abs(sum(int((~m).sum()) for m in second.values()) - 0.6 * total) <= len(second)
    for name, mask in second.items():
        assert not torch.any(mask & ~first[name]), name  # nothing pruned comes back
        assert torch.all(params[name].detach()[~mask] == 0)
    with pytest.raises(ConfigError, match="only removes more"):
        magnitude_prune(model, 0.5, scope=scope, prior=second)


def test_prune_per_layer_sparsities():
    model = small_squeezenet()
    names = list(prunable_layers(model))
    wanted = {name: (0.1 if i == 0 else 0.6) for i, name in enumerate(names)}
    masks = magnitude_prune(model, wanted)
    for name, mask in masks.items():
        assert abs(int((~mask).sum()) - wanted[name] * mask.numel()) <= 1, name
    with pytest.raises(ConfigError, match="missing"):
        magnitude_prune(small_squeezenet(), {names[0]: 0.5})
    with pytest.raises(ConfigError, match="unknown"):
        magnitude_prune(small_squeezenet(), {**wanted, "nope.weight": 0.5})
    with pytest.raises(ConfigError, match="scope='layer'"):
        magnitude_prune(small_squeezenet(), wanted, scope="global")


def test_balanced_sparsities_keep_the_overall_sparsity():
    model = small_squeezenet()
    sizes = {n: layer.weight.numel() for n, layer in prunable_layers(model).items()}
    stem = next(iter(sizes))
    per_layer = balanced_sparsities(model, 0.67, {stem: 0.0})
    assert per_layer[stem] == 0.0 and len(set(per_layer.values())) == 2
    assert sum(per_layer[n] * k for n, k in sizes.items()) == pytest.approx(0.67 * sum(sizes.values()))
    assert per_layer[next(n for n in sizes if n != stem)] > 0.67
    with pytest.raises(ConfigError, match="every weight"):
        balanced_sparsities(model, 0.99, {n: 0.0 for n in list(sizes)[:-1]})


def test_sensitivity_scan_holds_back_the_sensitive_layer():
    model = small_squeezenet()
    stem = model.features[0].weight
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def probe(m):  # a stand-in accuracy that only the stem's pruning hurts: 1 point per % pruned
        return 90.0 - 100 * float((m.features[0].weight == 0).float().mean())

    base, rows = sensitivity_scan(model, 0.67, probe, tolerance=20.0)
    assert base == 90.0 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    chosen = {r.name: r.chosen for r in rows}
    assert chosen.pop("features.0.weight") == pytest.approx(0.25 * 0.67)  # 67, 50, 34% cost > 20 points
    assert set(chosen.values()) == {0.67}
    assert list(rows[0].tried) == pytest.approx([0.67, 0.5025, 0.335, 0.1675]) and stem.numel() == rows[0].weights
    with pytest.raises(ConfigError, match="tolerance=-1"):
        sensitivity_scan(model, 0.67, probe, tolerance=-1)
    # the same model above chance (10 classes) is scanned; at chance it has nothing to protect
    assert sensitivity_scan(model, 0.67, probe, tolerance=20.0, chance=10.0)[1] == rows
    logged: list[str] = []
    base, rows = sensitivity_scan(model, 0.67, lambda m: probe(m) - 78.0, chance=10.0, log=logged.append)
    assert base == 12.0 and {r.chosen for r in rows} == {0.67} and all(r.tried == {} for r in rows)
    assert len(logged) == 1 and "within 5 points of chance (10.00%)" in logged[0]


def test_mask_guard_keeps_pruned_weights_zero_through_sgd():
    model = small_squeezenet()
    masks = magnitude_prune(model, 0.5)
    params = dict(model.named_parameters())
    start = {n: params[n].detach().clone() for n in masks}
    with MaskGuard(model, masks) as guard:
        sgd_steps(model, guard.after_step)
        for name, mask in masks.items():
            assert torch.equal(params[name].detach()[~mask], torch.zeros(int((~mask).sum())))
            assert params[name].grad[~mask].abs().max() == 0  # the hook zeroed the gradient
    assert any(not torch.equal(params[n].detach(), start[n]) for n in masks)  # kept weights trained
    model.zero_grad()
    model(torch.randn(2, 1, 16, 16)).sum().backward()  # hooks removed: gradients flow again
    assert any(params[n].grad[~m].abs().max() > 0 for n, m in masks.items())


def test_masks_must_fit_the_model():
    model = small_squeezenet()
    with pytest.raises(ConfigError, match="nope.weight"):
        MaskGuard(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        MaskGuard(model, {"features.0.weight": torch.ones(3, dtype=torch.bool)})


# ---- weight sharing ----------------------------------------------------------------------------
def test_kmeans_is_deterministic_sorted_and_nearest():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1)) ** 3
    c1, a1 = kmeans_1d(x, 16)
    c2, a2 = kmeans_1d(x, 16)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert c1.dtype == torch.float32 and torch.all(c1[1:] >= c1[:-1])
    dist = (x[:, None] - c1[None, :].double()).abs()
    assert torch.all(dist.gather(1, a1[:, None]).squeeze(1) <= dist.min(1).values + 1e-7)
    assert c1[-1] > x.quantile(0.999) and c1[0] < x.quantile(0.001)  # linear init keeps the rare large weights


def test_cluster_shares_weights_per_layer_with_bits_fc():
    model = small_mobilenet()
    masks, shared = compressed(model, 0.5, bits=3, bits_fc=2)
    params = dict(model.named_parameters())
    layers = prunable_layers(model)
    assert set(shared) == set(masks)
    for name, cl in shared.items():
        bits = 2 if isinstance(layers[name], nn.Linear) else 3
        w, mask = params[name].detach(), masks[name]
        assert cl.bits == bits and cl.codebook.shape == (2**bits,) and cl.indices.dtype == torch.uint8
        assert len(torch.unique(w[mask])) <= 2**bits
        assert torch.equal(w, torch.where(mask, cl.codebook[cl.indices.long()], 0.0))


@pytest.mark.parametrize("bad", [0, 13, 2.5])
def test_cluster_rejects_bad_bits(bad):
    with pytest.raises(ConfigError, match=f"bits={bad!r}"):
        cluster_weights(small_squeezenet(), bits=bad)


def test_shared_weights_stay_shared_through_sgd():
    model = small_squeezenet()
    masks, shared = compressed(model, 0.5, bits=3)
    params = dict(model.named_parameters())
    with SharedWeights(model, shared, masks) as sw:
        sgd_steps(model, sw.after_step)
        books = sw.codebooks()
        now = sw.clusters()
    moved = 0
    for name, mask in masks.items():
        w = params[name].detach()
        assert len(torch.unique(w[mask])) <= 8
        assert torch.all(w[~mask] == 0)
        assert torch.equal(w, torch.where(mask, books[name][shared[name].indices.long()], 0.0))
        assert torch.equal(now[name].indices, shared[name].indices)
        moved += not torch.equal(books[name], shared[name].codebook)
    assert moved > 0  # the centroids were fine-tuned


# ---- Huffman coding --------------------------------------------------------------------------
@pytest.mark.parametrize("symbols,alphabet", [
    (np.minimum(np.random.default_rng(0).geometric(0.3, 20000) - 1, 40), 41),  # skewed
    (np.random.default_rng(1).integers(0, 300, 5000), 300),                    # flat, > 256 symbols
    (np.array([0, 1, 1, 1]), 2),
    (np.array([5] * 1000), 9),                                                 # one symbol: 0 bits
    (np.array([], dtype=np.int64), 4),
])
def test_huffman_round_trip(symbols, alphabet):
    lengths, data, n_bits = huffman_encode(symbols, alphabet)
    assert np.array_equal(huffman_decode(lengths, data, n_bits, len(symbols)), symbols)
    if len(set(symbols.tolist())) <= 1:
        assert n_bits == 0 and data == b""
    else:
        ent = -sum(c / len(symbols) * np.log2(c / len(symbols)) for c in np.bincount(symbols) if c)
        assert ent <= n_bits / len(symbols) < ent + 1  # Huffman is within one bit of the entropy


def test_huffman_limits_code_length():
    fib = [1, 1]
    while len(fib) < 24:
        fib.append(fib[-1] + fib[-2])
    symbols = np.repeat(np.arange(24), fib)  # an unlimited Huffman code would need 23 bits
    lengths, data, n_bits = huffman_encode(symbols, 24)
    assert lengths.max() <= MAX_CODE_LEN
    assert np.array_equal(huffman_decode(lengths, data, n_bits, len(symbols)), symbols)


def test_huffman_decode_rejects_bad_streams():
    lengths, data, n_bits = huffman_encode(np.array([0, 1, 2, 2, 2, 3]), 4)
    with pytest.raises(ValueError):
        huffman_decode(lengths, data, n_bits, 7)  # more symbols than the stream holds
    with pytest.raises(ValueError):
        huffman_decode(np.array([1, 1, 1]), data, n_bits, 6)  # violates Kraft
    with pytest.raises(ValueError):
        huffman_decode(lengths, data, n_bits + 64, 6)  # bits beyond the buffer


def test_gap_entries_round_trip_with_fillers():
    keep = np.zeros(3000, dtype=bool)
    keep[[0, 1, 9, 700, 701, 2999]] = True  # runs of 0, 7, 690 and 2297 zeros
    symbols = np.arange(3000) % 7
    gaps, syms = to_entries(keep, symbols, gap_bits=3, filler=7)
    assert gaps.max() <= 7 and (syms == 7).sum() == 690 // 8 + 2297 // 8
    pos, idx = from_entries(gaps, syms, 3000, filler=7)
    assert np.array_equal(pos, np.flatnonzero(keep)) and np.array_equal(idx, symbols[keep])


# ---- the .pcz file ---------------------------------------------------------------------------
def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
        if sa[key].is_floating_point():  # bit for bit, signed zeros and all
            assert torch.equal(sa[key].view(torch.uint8), sb[key].view(torch.uint8)), key


@pytest.mark.parametrize("make,chans", [(small_squeezenet, 1), (small_mobilenet, 3)])
def test_pcz_round_trip_is_bit_exact(tmp_path, make, chans):
    model = make()
    masks, shared = compressed(model, 0.5, bits=6)
    meta = {"classes": [str(i) for i in range(10)], "mean": [0.5], "std": [0.25]}
    stats = save_pcz(tmp_path / "m.pcz", model, masks=masks, shared=shared, metadata=meta)
    assert stats.file_bytes == (tmp_path / "m.pcz").stat().st_size
    assert {r.encoding for r in stats.tensors} == {"raw", "huffman"}
    loaded, got_meta = load_pcz(tmp_path / "m.pcz")
    assert got_meta == meta and loaded.pocketcnn_build.name == model.pocketcnn_build.name and not loaded.training
    assert_same_state(model, loaded)
    x = torch.randn(2, chans, 16, 16)
    assert torch.equal(model.eval()(x), loaded(x))


def test_pcz_refuses_weights_that_left_their_codebook(tmp_path):
    model = small_squeezenet()
    masks, shared = compressed(model)
    with torch.no_grad():
        model.features[0].weight.add_(1e-3)
    with pytest.raises(ConfigError, match="features.0.weight"):
        save_pcz(tmp_path / "m.pcz", model, masks=masks, shared=shared)
    assert not (tmp_path / "m.pcz").exists()


@pytest.fixture(scope="module")
def pcz_bytes() -> bytes:
    torch.manual_seed(0)
    model = small_squeezenet()
    masks, shared = compressed(model, 0.5, bits=4)
    return encode_pcz(model, masks=masks, shared=shared)[0]


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("damage,message", [
    (lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 0x40]) + d[len(d) // 2 + 1:], "CRC32 mismatch"),
    (lambda d: d[: len(d) - 1000], "CRC32 mismatch"),
    (lambda d: d[:10], "too short"),
    (lambda d: b"PK\x03\x04" + d[4:], "not a .pcz file"),
    (lambda d: with_crc(d[:4] + struct.pack("<H", 2) + d[6:-4]), "version 2 is newer"),
    (lambda d: with_crc(d[:-4] + b"\0"), "1 bytes after the last tensor"),
    (lambda d: with_crc(d[:-1004]), "needs"),  # truncated, but with a valid checksum
    (lambda d: b"", "too short"),
])
def test_pcz_damaged_files_raise_checkpoint_error(tmp_path, pcz_bytes, damage, message):
    path = tmp_path / "damaged.pcz"
    path.write_bytes(damage(pcz_bytes))
    with pytest.raises(CheckpointError, match=message) as info:
        load_pcz(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pcz_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pcz"):
        load_pcz(tmp_path / "missing.pcz")


def test_pcz_random_damage_with_valid_checksum_never_crashes(tmp_path, pcz_bytes):
    """Every byte change (checksum fixed up) either loads or is a CheckpointError."""
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzz.pcz"
    body = bytearray(pcz_bytes[:-4])
    outcomes = set()
    for pos in rng.integers(4, len(body), 60):
        damaged = bytearray(body)
        damaged[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(with_crc(bytes(damaged)))
        try:
            load_pcz(path)
            outcomes.add("loaded")
        except CheckpointError as exc:
            assert str(path) in str(exc)
            outcomes.add("error")
    assert "error" in outcomes


# ---- sizes and the pipeline ------------------------------------------------------------------
def test_pcz_size_squeezenet1_1(tmp_path):
    """Random weights; the paper's setting keeps 33% of the weights (sparsity=0.67)."""
    sizes = {}
    for sparsity in (0.33, 0.67):
        torch.manual_seed(0)
        model = pocketcnn.create_model("squeezenet1_1", num_classes=10)
        masks, shared = compressed(model, sparsity, bits=6)
        sizes[sparsity] = save_pcz(tmp_path / f"{sparsity}.pcz", model, masks=masks, shared=shared).bits_per_param
    assert sizes[0.67] < 4.0  # measured: 2.68 bits/param
    assert sizes[0.67] < sizes[0.33] < 6.0  # measured: 4.94 (random weights: 6-bit indices are near uniform)


def test_deep_compress_pipeline(tmp_path):
    model = small_squeezenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    x = torch.randn(8, 1, 16, 16)

    def finetune(m, after_step):
        calls.append(after_step)
        sgd_steps(m, after_step, steps=2)

    def evaluate(m):
        return float(m.eval()(x).argmax(1).eq(0).float().mean())

    lines: list[str] = []
    result = deep_compress(model, sparsity=0.67, prune_steps=3, bits=4, finetune=finetune, evaluate=evaluate,
                           log=lines.append)
    assert len(lines) == 5 and lines[3].startswith("pruning round 3/3: 67.0% of the weights pruned, top-1 ")
    assert len(calls) == 4 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [r.sparsity for r in result.prune_rounds] == pytest.approx(prune_schedule(0.67, 3), abs=2e-3)
    assert all(r.accuracy is not None and r.accuracy_before_finetune is not None for r in result.prune_rounds)
    assert result.stage("pruned").accuracy == result.prune_rounds[-1].accuracy
    assert [s.name for s in result.stages] == ["dense", "pruned", "quantized", "coded"]
    sizes = [s.nbytes for s in result.stages]
    assert sizes[0] == 4 * result.n_params and sizes == sorted(sizes, reverse=True)
    assert all(s.accuracy is not None for s in result.stages)
    assert abs(result.sparsity - 0.67) < 1e-3
    params = dict(result.model.named_parameters())
    for name, mask in result.masks.items():
        assert torch.all(params[name].detach()[~mask] == 0) and len(torch.unique(params[name].detach()[mask])) <= 16
    stats = result.save(tmp_path / "c.pcz", metadata={"classes": list("abcdefghij")})
    assert abs(stats.file_bytes - result.stage("coded").nbytes) < 100
    assert stats.bits_per_param == pytest.approx(8 * stats.file_bytes / result.n_params)
    loaded, meta = load_pcz(tmp_path / "c.pcz")
    assert_same_state(result.model, loaded)
    assert meta["classes"][0] == "a"


def test_deep_compress_with_sensitivity_scan():
    model = small_squeezenet()

    def probe(m):
        return 90.0 - 100 * float((m.features[0].weight == 0).float().mean())

    result = deep_compress(model, sparsity=0.67, prune_steps=2, bits=4, probe=probe, tolerance=20.0)
    assert result.layer_sparsity["features.0.weight"] == pytest.approx(0.1675)
    stem_mask = result.masks["features.0.weight"]
    assert abs(int((~stem_mask).sum()) - 0.1675 * stem_mask.numel()) <= 1
    assert abs(result.sparsity - 0.67) < 1e-3  # the other layers made up for it
    assert len(result.prune_rounds) == 2 and result.sensitivity[0].name == "features.0.weight"
    with pytest.raises(ConfigError, match="scope='layer'"):
        deep_compress(small_squeezenet(), probe=probe, scope="global")


def test_deep_compress_rejects_bad_values():
    with pytest.raises(ConfigError, match="bits_fc=0"):
        deep_compress(small_squeezenet(), bits_fc=0)
    with pytest.raises(ConfigError, match="finetune=3"):
        deep_compress(small_squeezenet(), finetune=3)
