"""Huffman coding and the ``.pcz`` file, the last stage of Deep Compression (Han et al., 2016).

A shared (clustered) weight tensor is stored as its codebook plus two Huffman-coded
streams of one entry per kept weight: the cluster index, and the *gap* (number of pruned
weights skipped since the previous entry, at most ``2**gap_bits - 1``). A longer run of
zeros is bridged by *filler* entries (gap = max, index symbol = codebook size, value 0).
Everything else (biases, BatchNorm, buffers) is stored raw. The byte layout is in
``docs/pcz.md``; decoding is exact: the loaded state dict equals the saved one bit for bit.
"""
from __future__ import annotations

import heapq
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, PocketCNNError
from ..registry import create_model
from ..train.checkpoint import atomic_write
from .cluster import MAX_BITS, Cluster

MAGIC, VERSION = b"PCZ1", 1
MAX_CODE_LEN = 16  # longest Huffman code; decode tables have 2**16 entries
GAP_BITS = 8
_CHUNK = 1 << 18  # symbols (encode) or bits (decode) handled per vectorized step
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


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


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """``(n,)`` code lengths -> ``(n,)`` int64 canonical codes (ordered by length, then symbol)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code = prev = 0
    for s in np.lexsort((np.arange(len(lengths)), lengths)):
        if lengths[s]:
            code <<= int(lengths[s]) - prev
            codes[s], prev = code, int(lengths[s])
            code += 1
    return codes


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
    for start in range(0, len(symbols), _CHUNK):
        s = symbols[start:start + _CHUNK]
        left = codes[s] << (MAX_CODE_LEN - lens[s])  # code left-aligned in 16 bits
        bits = ((left[:, None] >> (MAX_CODE_LEN - 1 - j)) & 1).astype(np.uint8)
        parts.append(bits[j[None, :] < lens[s][:, None]])
    flat = np.concatenate(parts)
    return lengths, np.packbits(flat).tobytes(), int(flat.size)


def _windows(padded: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The 16 bits starting at each bit position ``pos`` of an MSB-first byte buffer."""
    byte = pos >> 3
    word = (padded[byte].astype(np.int64) << 16) | (padded[byte + 1].astype(np.int64) << 8) | padded[byte + 2]
    return (word >> (8 - (pos & 7))) & 0xFFFF


def huffman_decode(lengths: np.ndarray, data: bytes | memoryview, n_bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`huffman_encode`: ``-> (count,)`` int64 symbols.

    Raises ``ValueError`` for any inconsistency (bad code table, invalid code, bits left
    over or missing); work and memory are bounded by ``n_bits``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if used.size and lengths.max() > MAX_CODE_LEN:
        raise ValueError(f"code length {lengths.max()} exceeds {MAX_CODE_LEN}")
    if count == 0 or used.size == 1:
        if n_bits:
            raise ValueError(f"{n_bits} bits for a stream that needs none")
        return np.full(count, used[0] if used.size else 0, dtype=np.int64)
    if used.size == 0:
        raise ValueError(f"empty code table for {count} symbols")
    if int((1 << (MAX_CODE_LEN - lengths[used])).sum()) > 1 << MAX_CODE_LEN:
        raise ValueError("code lengths violate the Kraft inequality")
    if n_bits > 8 * len(data) or count > n_bits:
        raise ValueError(f"{n_bits} bits cannot hold {count} symbols in {len(data)} bytes")
    codes = canonical_codes(lengths)
    sym_table = np.zeros(1 << MAX_CODE_LEN, dtype=np.int64)
    len_table = np.zeros(1 << MAX_CODE_LEN, dtype=np.int64)
    for s in used:
        span = 1 << (MAX_CODE_LEN - int(lengths[s]))
        sym_table[codes[s] * span:(codes[s] + 1) * span] = s
        len_table[codes[s] * span:(codes[s] + 1) * span] = lengths[s]
    padded = np.concatenate([np.frombuffer(data, np.uint8, count=(n_bits + 7) // 8), np.zeros(3, np.uint8)])
    starts: list[int] = []
    p = 0
    for a in range(0, n_bits, _CHUNK):  # follow the chain of code starts, one chunk of bits at a time
        b = min(a + _CHUNK, n_bits)
        if p >= b:
            continue
        pos = np.arange(a, b, dtype=np.int64)
        ln = len_table[_windows(padded, pos)]
        nxt = pos + ln
        nxt[(ln == 0) | (nxt > n_bits)] = -1
        nxt_list = nxt.tolist()
        while 0 <= p < b:
            starts.append(p)
            p = nxt_list[p - a]
        if p < 0:
            raise ValueError(f"invalid Huffman code at bit {starts[-1]}")
    if p != n_bits or len(starts) != count:
        raise ValueError(f"decoded {len(starts)} symbols, expected {count}")
    return sym_table[_windows(padded, np.array(starts, dtype=np.int64))]


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


def from_entries(gaps: np.ndarray, syms: np.ndarray, numel: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_entries`: ``-> (positions of kept weights, their symbols)``."""
    pos = np.cumsum(gaps + 1) - 1
    if len(pos) and pos[-1] >= numel:
        raise ValueError(f"entries reach position {pos[-1]} of a tensor of {numel}")
    real = syms != filler
    return pos[real], syms[real]


# ---- the .pcz container ----------------------------------------------------------------
@dataclass(frozen=True)
class TensorRecord:
    """One state-dict entry as stored: ``encoding`` is ``"raw"`` or ``"huffman"``."""

    name: str
    shape: tuple[int, ...]
    encoding: str
    nbytes: int


@dataclass(frozen=True)
class PczStats:
    """What :func:`save_pcz` wrote: ``bits_per_param = 8 * file_bytes / n_params`` (all parameters)."""

    path: Path | None
    file_bytes: int
    n_params: int
    bits_per_param: float
    tensors: tuple[TensorRecord, ...]


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
    name = name if name is not None else getattr(model, "pocketcnn_name", None)
    model_kwargs = model_kwargs if model_kwargs is not None else getattr(model, "pocketcnn_kwargs", None)
    if not isinstance(name, str) or not isinstance(model_kwargs, Mapping):
        raise ConfigError(f"a .pcz file needs the registry name and model_kwargs, received name={name!r}, "
                          f"model_kwargs={model_kwargs!r} (models from create_model carry both)")
    if not isinstance(gap_bits, int) or isinstance(gap_bits, bool) or not 1 <= gap_bits <= 15:
        raise ConfigError(f"gap_bits must be an integer in [1, 15], received gap_bits={gap_bits!r}")
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
    try:
        header = json.dumps({"model": name, "model_kwargs": dict(model_kwargs), "metadata": dict(metadata or {}),
                             "tensors": entries}, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model_kwargs and metadata must be JSON-serializable: {exc}") from None
    body = MAGIC + struct.pack("<HI", VERSION, len(header)) + header + b"".join(blobs)
    return body + struct.pack("<I", zlib.crc32(body)), tuple(records)


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
    path = atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    n_params = sum(p.numel() for p in model.parameters())
    return PczStats(path, len(data), n_params, 8 * len(data) / max(n_params, 1), records)


class _Reader:
    """Reads a byte buffer front to back; every length is checked against what is left."""

    def __init__(self, data: memoryview, path: Path, pos: int) -> None:
        self.data, self.path, self.pos = data, path, pos

    def take(self, n: int, what: str) -> memoryview:
        left = len(self.data) - self.pos
        if n > left:
            raise CheckpointError(f"{self.path}: corrupt .pcz file: {what} needs {n} bytes, {left} left")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def _read_header(data: bytes, path: Path) -> tuple[dict[str, Any], _Reader]:
    if len(data) < 14:
        raise CheckpointError(f"{path}: too short for a .pcz file ({len(data)} bytes)")
    if data[:4] != MAGIC:
        raise CheckpointError(f"{path}: not a .pcz file (magic {data[:4]!r}, expected {MAGIC!r})")
    (version,) = struct.unpack_from("<H", data, 4)
    if version > VERSION:
        raise CheckpointError(f"{path}: .pcz version {version} is newer than this pocketcnn reads ({VERSION})")
    if version < 1:
        raise CheckpointError(f"{path}: invalid .pcz version {version}")
    stored, computed = struct.unpack_from("<I", data, len(data) - 4)[0], zlib.crc32(memoryview(data)[:-4])
    if stored != computed:
        raise CheckpointError(f"{path}: CRC32 mismatch (stored {stored:08x}, computed {computed:08x}): "
                              "the file is corrupt or truncated")
    reader = _Reader(memoryview(data)[:-4], path, 6)
    (n,) = reader.unpack("<I", "header length")
    try:
        header = json.loads(bytes(reader.take(n, "JSON header")).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt .pcz header ({exc})") from None
    ok = (isinstance(header, dict) and isinstance(header.get("model"), str)
          and isinstance(header.get("model_kwargs"), dict) and isinstance(header.get("metadata"), dict)
          and isinstance(header.get("tensors"), list)
          and all(isinstance(t, list) and len(t) == 4 and isinstance(t[0], str) and isinstance(t[1], list)
                  and t[2] in DTYPES and t[3] in ("raw", "huffman") for t in header["tensors"]))
    if not ok:
        raise CheckpointError(f"{path}: corrupt .pcz header (missing or malformed fields)")
    return header, reader


def _decode_tensor(r: _Reader, key: str, ref: torch.Tensor, enc: str) -> torch.Tensor:
    numel, what = ref.numel(), f"tensor {key!r}"
    if enc == "raw":
        buf = r.take(numel * ref.element_size(), what)
        return torch.frombuffer(bytearray(buf), dtype=ref.dtype).reshape(ref.shape) if numel else torch.empty_like(ref)
    m, gap_bits, k = r.unpack("<IBH", what)
    if ref.dtype != torch.float32 or not 1 <= gap_bits <= 15 or not 1 <= k <= 1 << MAX_BITS or m > numel:
        raise CheckpointError(f"{r.path}: corrupt {what}: {m} entries, gap_bits={gap_bits}, codebook of {k}")
    codebook = np.frombuffer(r.take(4 * k, f"codebook of {what}"), dtype="<f4")
    streams = []
    for alphabet in (k + 1, 1 << gap_bits):
        (n,) = r.unpack("<H", what)
        lengths = np.frombuffer(r.take(n, f"code lengths of {what}"), dtype=np.uint8)
        (n_bits,) = r.unpack("<I", what)
        data = r.take((n_bits + 7) // 8, f"bit stream of {what}")
        try:
            if n > alphabet:
                raise ValueError(f"code table of {n} symbols for an alphabet of {alphabet}")
            streams.append(huffman_decode(lengths, data, n_bits, m))
        except ValueError as exc:
            raise CheckpointError(f"{r.path}: corrupt {what}: {exc}") from None
    try:
        pos, idx = from_entries(streams[1], streams[0], numel, filler=k)
    except ValueError as exc:
        raise CheckpointError(f"{r.path}: corrupt {what}: {exc}") from None
    out = np.zeros(numel, dtype=np.float32)
    out[pos] = codebook[idx]
    return torch.from_numpy(out).reshape(ref.shape)


def load_pcz(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Read a ``.pcz`` file: ``-> (model in eval mode, metadata dict)``.

    A missing, truncated, corrupt, foreign or newer file raises :class:`CheckpointError`
    naming the file; nothing is allocated beyond the model the header describes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read .pcz file ({exc.strerror or exc})") from None
    header, reader = _read_header(data, path)
    try:
        model = create_model(header["model"], **header["model_kwargs"])
    except (PocketCNNError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build model {header['model']!r}: {exc}") from None
    expected = model.state_dict()
    stored = {t[0]: t for t in header["tensors"]}
    if set(stored) != set(expected) or len(stored) != len(header["tensors"]):
        diff = sorted(set(stored) ^ set(expected))[:3]
        raise CheckpointError(f"{path}: tensors do not fit model {header['model']!r} (differ: {diff})")
    state = {}
    for key, shape, dtype, enc in header["tensors"]:
        ref = expected[key]
        if list(ref.shape) != shape or DTYPES[dtype] != ref.dtype:
            raise CheckpointError(f"{path}: tensor {key!r} is {dtype} {shape}, the model has "
                                  f"{ref.dtype} {list(ref.shape)}")
        state[key] = _decode_tensor(reader, key, ref, enc)
    if reader.pos != len(reader.data):
        raise CheckpointError(f"{path}: corrupt .pcz file: {len(reader.data) - reader.pos} bytes after the last tensor")
    model.load_state_dict(state)
    return model.eval(), header["metadata"]

