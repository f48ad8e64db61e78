"""The ``.pcz`` container of Deep Compression (Han et al., 2016): layout, reading and framing.

The byte layout is in ``docs/pcz.md``. A shared (clustered) weight tensor is stored as its
codebook plus two Huffman-coded streams of one entry per kept weight: the cluster index,
and the *gap* (number of pruned weights skipped since the previous entry, at most
``2**gap_bits - 1``); a longer run of zeros is bridged by *filler* entries (gap = max,
index symbol = codebook size, value 0). Everything else is stored raw. This module owns the
format: framing, canonical code tables, decoding and :func:`load_pcz`; the encoder (code
lengths from frequencies, clustering entries) is ``pocketcnn.compress.coding``. Decoding is
exact: the loaded state dict equals the saved one bit for bit.
"""
from __future__ import annotations

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

from ..errors import CheckpointError, ConfigError
from .checkpoint import build_recorded

MAGIC, VERSION = b"PCZ1", 1
MAX_CODE_LEN = 16  # longest Huffman code; decode tables have 2**16 entries
MAX_BITS = 12  # largest codebook: 2**12 centroids
GAP_BITS = 8
CHUNK = 1 << 18  # symbols (encode) or bits (decode) handled per vectorized step
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


# ---- canonical Huffman codes and decoding -------------------------------------------------
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
    for a in range(0, n_bits, CHUNK):  # follow the chain of code starts, one chunk of bits at a time
        b = min(a + CHUNK, n_bits)
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
def from_entries(gaps: np.ndarray, syms: np.ndarray, numel: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_entries`: ``-> (positions of kept weights, their symbols)``."""
    pos = np.cumsum(gaps + 1) - 1
    if len(pos) and pos[-1] >= numel:
        raise ValueError(f"entries reach position {pos[-1]} of a tensor of {numel}")
    real = syms != filler
    return pos[real], syms[real]


# ---- the container ---------------------------------------------------------------------------
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


def frame(name: str, model_kwargs: Mapping[str, Any], metadata: Mapping[str, Any] | None,
          entries: list[list[Any]], blobs: list[bytes]) -> bytes:
    """``MAGIC | u16 version | u32 header length | JSON header | tensor blobs | u32 CRC32``."""
    try:
        header = json.dumps({"model": name, "model_kwargs": dict(model_kwargs), "metadata": dict(metadata or {}),
                             "tensors": entries}, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model_kwargs and metadata must be JSON-serializable: {exc}") from None
    body = MAGIC + struct.pack("<HI", VERSION, len(header)) + header + b"".join(blobs)
    return body + struct.pack("<I", zlib.crc32(body))


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
    shapes = {t[0]: tuple(t[1]) for t in header["tensors"]}
    model = build_recorded(header["model"], header["model_kwargs"], shapes, str(path))
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

