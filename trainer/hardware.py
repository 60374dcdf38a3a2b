"""What this machine's CPU can do, read from ``/proc/cpuinfo`` (detected, never assumed).

``train.precision=auto`` and ``train.channels_last=auto`` use it on a CPU: bf16 autocast and
channels_last where the CPU has bf16 matrix units (Intel AMX-BF16, or AVX512-BF16 on Intel
Cooper Lake+ and AMD Zen 4+), where oneDNN's bf16 convolutions and matmuls run about twice
as fast as fp32; fp32 elsewhere (without them, bf16 is emulated and slower than fp32).

``SSLBENCH_CPU_BF16=0`` or ``1`` overrides the detection (the test suite sets 0, so that
``auto`` resolves to fp32 on every CI machine and exact-number tests stay exact).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")
ENV = "SSLBENCH_CPU_BF16"


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags common to every processor listed in a ``/proc/cpuinfo`` text."""
    per_cpu = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
               if line.split(":", 1)[0].strip() in ("flags", "Features") and ":" in line]
    return set.intersection(*per_cpu) if per_cpu else set()


def bf16_matrix_units(cpuinfo: str) -> bool:
    """True when the CPU described by ``cpuinfo`` has bf16 matrix instructions."""
    return bool(cpu_flags(cpuinfo) & set(BF16_FLAGS))


@functools.lru_cache(maxsize=1)
def _detected() -> bool:
    try:
        return bf16_matrix_units(CPUINFO.read_text())
    except OSError:  # not Linux, or no /proc: assume nothing
        return False


def cpu_prefers_bf16() -> bool:
    """``auto``'s choice on this machine's CPU: bf16 (+ channels_last) or fp32."""
    override = os.environ.get(ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        raise ValueError(f"{ENV}={override!r}: expected 0 or 1")
    return _detected()
