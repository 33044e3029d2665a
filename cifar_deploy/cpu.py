"""The CPU a figure was measured on, with the int8 and bf16 capabilities that decide it.

Int8 latency and, for ONNX Runtime's int8 kernels, int8 results differ by instruction set: AMX
and VNNI multiply-accumulate uint8 x int8 into 32 bits, while AVX2 alone adds pairs of products in
a saturating 16-bit lane. bf16 training and inference run natively only with AMX-BF16 or
AVX512-BF16. Every table of timings or quantized accuracy names these, so a figure says where
it holds.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# (flag in /proc/cpuinfo, name people know), strongest first.
INT8_FLAGS = (
    ("amx_int8", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("i8mm", "Arm i8mm"),
    ("asimddp", "Arm dotprod"),
)
BF16_FLAGS = (
    ("amx_bf16", "AMX"),
    ("avx512_bf16", "AVX512-BF16"),
    ("bf16", "Arm BF16"),
)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: frozenset[str]

    @property
    def int8(self) -> str:
        """Int8 dot-product instructions, or the fallback the kernels use without them."""
        found = [name for flag, name in INT8_FLAGS if flag in self.flags]
        if found:
            return ", ".join(found)
        if "avx2" in self.flags:
            return "AVX2 only (no VNNI)"
        return "no int8 dot product" if self.flags else "unknown"

    @property
    def bf16(self) -> str:
        found = [name for flag, name in BF16_FLAGS if flag in self.flags]
        return ", ".join(found) if found else ("none" if self.flags else "unknown")

    @property
    def vnni(self) -> bool:
        """Whether ONNX Runtime's x86 U8S8 kernels accumulate in 32 bits (no 16-bit saturation)."""
        return bool({"amx_int8", "avx512_vnni", "avx_vnni"} & self.flags)

    def label(self) -> str:
        """One line for table titles: model, cores, int8 and bf16 capabilities."""
        return f"{self.model}, {self.cores} cores; int8: {self.int8}; bf16: {self.bf16}"

    def to_dict(self) -> dict:
        return {"model": self.model, "cores": self.cores, "int8": self.int8, "bf16": self.bf16}


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) from Linux's /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, frozenset(flags)


@functools.cache
def cpu_info() -> CpuInfo:
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: the model name only, capabilities unknown
        model, flags = "", frozenset()
    return CpuInfo(
        model=model or platform.processor() or platform.machine() or "unknown CPU",
        cores=os.cpu_count() or 1,
        flags=flags,
    )
