"""Huffman coding for Deep Compression (Han et al., 2016): the encoder behind ``.pcz`` files.

Code lengths from symbol frequencies, the bit streams, and the entries of a pruned and
clustered tensor (see ``pocketcnn.artifacts.pcz`` for the container, its layout and the
decoder; ``docs/pcz.md`` for the bytes).
"""
from __future__ import annotations

import heapq
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts.pcz import (CHUNK, DTYPES, GAP_BITS, MAX_BITS, MAX_CODE_LEN, PczStats, TensorRecord, canonical_codes,
                             frame)
from ..errors import ConfigError
from ..validate import check_int
from ..fileio import atomic_write_bytes
from ..models.registry import require_build
from .cluster import Cluster


# ---- canonical Huffman ----------------------------------------------------------------
def code_lengths(freqs: np.ndarray) -> np.ndarray:
    """``(n,)`` symbol counts -> ``(n,)`` uint8 Huffman code lengths (0 = unused), at most 16.

    A lone used symbol gets length 1. Codes longer than 16 bits are avoided by halving
    the counts (never below 1) and building again.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = np.zeros(len(freqs), dtype=np.uint8)
    used = np.flatnonzero(freqs)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    weights = freqs[used]
    while True:
        heap = [(int(w), i) for i, w in enumerate(weights)]
        heapq.heapify(heap)
        parent = [0] * (2 * len(heap) - 1)
        node = len(heap)
        while len(heap) > 1:
            (w1, a), (w2, b) = heapq.heappop(heap), heapq.heappop(heap)
            parent[a] = parent[b] = node
            heapq.heappush(heap, (w1 + w2, node))
            node += 1
        depth = [0] * node  # the root (node - 1) has depth 0; children have smaller ids
        for i in range(node - 2, -1, -1):
            depth[i] = depth[parent[i]] + 1
        if max(depth[: len(used)]) <= MAX_CODE_LEN:
            lengths[used] = depth[: len(used)]
            return lengths
        weights = (weights + 1) // 2


def huffman_encode(symbols: np.ndarray, n_symbols: int) -> tuple[np.ndarray, bytes, int]:
    """``(m,)`` ints in ``[0, n_symbols)`` -> ``(code lengths (n_symbols,), bit stream, n_bits)``.

    Bits are MSB-first. A stream of one distinct symbol takes 0 bits.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = code_lengths(np.bincount(symbols, minlength=n_symbols))
    if np.count_nonzero(lengths) <= 1:
        return lengths, b"", 0
    codes, lens = canonical_codes(lengths), lengths.astype(np.int64)
    j = np.arange(MAX_CODE_LEN)
    parts = []
    for start in range(0, len(symbols), CHUNK):
        s = symbols[start:start + CHUNK]
        left = codes[s] << (MAX_CODE_LEN - lens[s])  # code left-aligned in 16 bits
        bits = ((left[:, None] >> (MAX_CODE_LEN - 1 - j)) & 1).astype(np.uint8)
        parts.append(bits[j[None, :] < lens[s][:, None]])
    flat = np.concatenate(parts)
    return lengths, np.packbits(flat).tobytes(), int(flat.size)


# ---- sparse positions as relative gaps ---------------------------------------------------
def to_entries(keep: np.ndarray, symbols: np.ndarray, gap_bits: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """``keep (n,) bool, symbols (n,) int -> (gaps (m,), entry symbols (m,))``, m = kept + fillers.

    Each gap counts the zeros skipped since the previous entry, at most ``2**gap_bits - 1``;
    a longer run gets filler entries (gap = max, symbol = ``filler``), each standing for one zero.
    """
    max_gap = (1 << gap_bits) - 1
    pos = np.flatnonzero(keep)
    zeros = np.diff(pos, prepend=-1) - 1
    fills = zeros // (max_gap + 1)
    real = np.cumsum(fills + 1) - 1
    m = len(pos) + int(fills.sum())
    gaps, syms = np.full(m, max_gap, dtype=np.int64), np.full(m, filler, dtype=np.int64)
    gaps[real], syms[real] = zeros - fills * (max_gap + 1), symbols[pos]
    return gaps, syms


def _stream(symbols: np.ndarray, alphabet: int) -> bytes:
    """``u16 n | n x u8 code lengths | u32 n_bits | ceil(n_bits / 8) bytes``."""
    lengths, data, n_bits = huffman_encode(symbols, alphabet)
    used = np.flatnonzero(lengths)
    n = int(used[-1]) + 1 if used.size else 0
    if n_bits >= 1 << 32:
        raise ConfigError(f"a tensor's stream of {n_bits} bits does not fit a .pcz file (max 2**32 - 1)")
    return struct.pack("<H", n) + lengths[:n].tobytes() + struct.pack("<I", n_bits) + data


def _encode_shared(key: str, w: torch.Tensor, mask: torch.Tensor | None, cl: Cluster, gap_bits: int) -> bytes:
    codebook = cl.codebook.detach().cpu().to(torch.float32).flatten()
    k = codebook.numel()
    mask = torch.ones(w.shape, dtype=torch.bool) if mask is None else mask.detach().cpu()
    idx = cl.indices.detach().cpu().long()
    if w.dtype != torch.float32 or mask.shape != w.shape or idx.shape != w.shape or not 1 <= k <= 1 << MAX_BITS:
        raise ConfigError(f"cannot code {key!r}: dtype {w.dtype}, shape {tuple(w.shape)}, mask "
                          f"{tuple(mask.shape)}, indices {tuple(idx.shape)}, codebook of {k}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise ConfigError(f"indices of {key!r} must be in [0, {k}), received [{int(idx.min())}, {int(idx.max())}]")
    expected = torch.where(mask, codebook[idx], 0.0)
    if not torch.equal(expected.view(torch.int32), w.contiguous().view(torch.int32)):
        raise ConfigError(f"weight {key!r} is not codebook[indices] with +0.0 where pruned; "
                          "call SharedWeights.after_step() after the last weight update")
    gaps, syms = to_entries(mask.flatten().numpy(), idx.flatten().numpy(), gap_bits, filler=k)
    return (struct.pack("<IBH", len(gaps), gap_bits, k) + codebook.numpy().astype("<f4").tobytes()
            + _stream(syms, k + 1) + _stream(gaps, 1 << gap_bits))


def encode_pcz(model: nn.Module, *, name: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
               masks: Mapping[str, torch.Tensor] | None = None, shared: Mapping[str, Cluster] | None = None,
               metadata: Mapping[str, Any] | None = None, gap_bits: int = GAP_BITS,
               ) -> tuple[bytes, tuple[TensorRecord, ...]]:
    """The bytes of a ``.pcz`` file for ``model`` (see :func:`save_pcz`) and what each tensor took."""
    if name is None or model_kwargs is None:
        build = require_build(model, "a .pcz file")
        name = build.name if name is None else name
        model_kwargs = build.kwargs if model_kwargs is None else model_kwargs
    if not isinstance(name, str) or not isinstance(model_kwargs, Mapping):
        raise ConfigError(f"a .pcz file needs the registry name and model_kwargs, received name={name!r}, "
                          f"model_kwargs={model_kwargs!r} (models from create_model carry both)")
    check_int("gap_bits", gap_bits, 1, 15)
    state, masks, shared = model.state_dict(), dict(masks or {}), dict(shared or {})
    for key in shared:
        if key not in state:
            raise ConfigError(f"shared weights for {key!r} match no tensor of the model's state dict")
    entries, blobs, records = [], [], []
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in DTYPES.values():
            raise ConfigError(f"cannot store {key!r} of dtype {t.dtype} in a .pcz file")
        blob, enc = t.reshape(-1).view(torch.uint8).numpy().tobytes(), "raw"
        if key in shared:
            coded = _encode_shared(key, t, masks.get(key), shared[key], gap_bits)
            if len(coded) < len(blob):
                blob, enc = coded, "huffman"
        dtype = str(t.dtype).removeprefix("torch.")
        entries.append([key, list(t.shape), dtype, enc])
        blobs.append(blob)
        records.append(TensorRecord(key, tuple(t.shape), enc, len(blob)))
    return frame(name, model_kwargs, metadata, entries, blobs), tuple(records)


def save_pcz(path: str | Path, model: nn.Module, *, name: str | None = None,
             model_kwargs: Mapping[str, Any] | None = None, masks: Mapping[str, torch.Tensor] | None = None,
             shared: Mapping[str, Cluster] | None = None, metadata: Mapping[str, Any] | None = None,
             gap_bits: int = GAP_BITS) -> PczStats:
    """Write ``model`` as a ``.pcz`` file, atomically.

    Tensors in ``shared`` (from ``cluster_weights`` or ``SharedWeights.clusters()``) are
    Huffman-coded when that is smaller than raw; their weights must equal
    ``where(mask, codebook[indices], 0.0)`` bit for bit (else ConfigError). ``name`` and
    ``model_kwargs`` default to what ``create_model`` recorded on the model.
    """
    data, records = encode_pcz(model, name=name, model_kwargs=model_kwargs, masks=masks, shared=shared,
                               metadata=metadata, gap_bits=gap_bits)
    path = atomic_write_bytes(path, data)
    n_params = sum(p.numel() for p in model.parameters())
    return PczStats(path, len(data), n_params, 8 * len(data) / max(n_params, 1), records)


