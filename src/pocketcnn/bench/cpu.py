"""The CPU a number was measured on: its name and the instruction sets that decide CNN speed.

Convolutions in fp32 run on the widest vector unit (AVX2 or AVX-512 on x86, NEON on ARM); INT8
is faster than fp32 only where the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI
or AMX on x86, the dot-product extension on ARM): elsewhere an INT8 model is smaller, not faster.
bf16 training kernels need AVX512-BF16 or AMX. Every speed record says which of these it had.

PyTorch can be made to act like an older CPU: ``ATEN_CPU_CAPABILITY=avx2`` (its own kernels) and
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's convolutions); :func:`cpu_info` reports both when set.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name the docs use, in the order they are printed
FEATURES = {
    "avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX", "asimd": "NEON", "asimddp": "DOTPROD", "i8mm": "I8MM",
}
INT8_DOT = ("AVX512-VNNI", "AVX-VNNI", "AMX", "DOTPROD")
OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


@dataclass(frozen=True)
class CpuInfo:
    model: str  # e.g. "AMD EPYC 7B12" or "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    machine: str  # x86_64, aarch64
    cores: int
    features: tuple[str, ...]  # of FEATURES' names, those the CPU reports
    overrides: dict[str, str]  # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA when set

    @property
    def int8_dot(self) -> bool:
        """Whether INT8 can be faster than fp32 here (int8 dot-product instructions)."""
        return any(f in INT8_DOT for f in self.features)

    def summary(self) -> str:
        """One line for a table header: ``AMD EPYC 7B12, 2 cores: AVX2 (no AVX-512, no int8 dot product)``."""
        x86 = self.machine in ("x86_64", "AMD64", "i686")
        missing = [f for f in (("AVX-512",) if x86 else ()) if f not in self.features]
        if not self.int8_dot:
            missing.append("int8 dot product")
        feats = ", ".join(self.features) or "no vector extension found"
        line = f"{self.model}, {self.cores} cores: {feats}" + (f" (no {', no '.join(missing)})" if missing else "")
        if self.overrides:
            line += "; limited by " + ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return line

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "features": list(self.features), "int8_dot": self.int8_dot}


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """Read from ``/proc/cpuinfo`` (Linux); elsewhere the model comes from :mod:`platform` and no feature
    is claimed."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    features = tuple(name for flag, name in FEATURES.items() if flag in flags)
    overrides = {k: os.environ[k] for k in OVERRIDES if os.environ.get(k)}
    return CpuInfo(model, platform.machine(), os.cpu_count() or 1, features, overrides)


if __name__ == "__main__":  # pragma: no cover - `python -m pocketcnn.bench.cpu`
    sys.stdout.write(cpu_info().summary() + "\n")
