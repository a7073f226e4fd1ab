"""The FP32 peak of one CPU core, estimated from ``/proc/cpuinfo``: what a measured GFLOP/s is a
share of.

An estimate, not a measurement: FMA pipes x FP32 lanes per FMA x 2 FLOPs per FMA x clock. The
lanes come from the flags (``avx512f``: 16; ``avx2`` and ``fma``: 8; else 4), except on AMD
family 25 (Zen 3 and 4), whose 512-bit instructions run as two halves on 256-bit units, so
8; the pipes are assumed to be 2 (true of recent x86 server cores, not checked); the clock is
``lscpu``'s "CPU max MHz" where it reports one, else the highest "cpu MHz" in the file (under a
hypervisor often the nominal clock, so a boosting core can beat the estimate).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CorePeak", "machine_peak", "parse_cpuinfo"]

FMA_PIPES = 2  # per core: assumed, cpuinfo does not say
FLOPS_PER_FMA = 2


@dataclass(frozen=True)
class CorePeak:
    """One core's estimated FP32 peak and what it was derived from."""

    model: str  # cpuinfo's "model name"
    lanes: int  # FP32 lanes of one FMA
    ghz: float
    clock_source: str  # where ghz came from
    why_lanes: str  # which flags (or exception) gave the lanes
    pipes: int = FMA_PIPES

    @property
    def gflops(self) -> float:
        """Peak GFLOP/s of one core."""
        return self.pipes * self.lanes * FLOPS_PER_FMA * self.ghz

    def describe(self) -> str:
        """One sentence: the figure and how it was derived."""
        return (
            f"FP32 peak of one core of the {self.model}, estimated: {self.pipes} FMA pipes "
            f"(assumed) x {self.lanes} lanes ({self.why_lanes}) x {FLOPS_PER_FMA} FLOPs x "
            f"{self.ghz:.2f} GHz ({self.clock_source}) = {self.gflops:.0f} GFLOP/s"
        )


def _field(block: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", block, re.MULTILINE)
    return match.group(1).strip() if match else ""


def parse_cpuinfo(text: str, *, max_mhz: float | None = None) -> CorePeak:
    """The peak of the first processor in ``text`` (``/proc/cpuinfo``'s format).

    Args:
        text: The file's contents.
        max_mhz: The core's maximum clock (``lscpu``'s "CPU max MHz"); None or 0: the highest
            "cpu MHz" in ``text``.

    Raises:
        ValueError: ``text`` names no clock and ``max_mhz`` is not given.
    """
    first = text.strip().split("\n\n", 1)[0]
    flags = set(_field(first, "flags").split())
    vendor, family = _field(first, "vendor_id"), _field(first, "cpu family")
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == "25":
        lanes, why = 8, "avx512f, but Zen 4 runs it on 256-bit units"
    elif "avx512f" in flags:
        lanes, why = 16, "avx512f"
    elif {"avx2", "fma"} <= flags:
        lanes, why = 8, "avx2 and fma"
    else:
        lanes, why = 4, "no avx2 with fma"
    if max_mhz:
        mhz, source = max_mhz, "lscpu max MHz"
    else:
        clocks = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
        if not clocks:
            raise ValueError("no 'cpu MHz' in the cpuinfo text and no max_mhz given")
        mhz, source = max(clocks), "cpuinfo cpu MHz"
    model = _field(first, "model name") or "unnamed CPU"
    return CorePeak(model=model, lanes=lanes, ghz=mhz / 1000, clock_source=source, why_lanes=why)


def _lscpu_max_mhz() -> float | None:
    if shutil.which("lscpu") is None:
        return None
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.MULTILINE)
    return float(match.group(1)) if match else None


def machine_peak() -> CorePeak | None:
    """This machine's estimate; None where there is no ``/proc/cpuinfo`` (not Linux)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    return parse_cpuinfo(path.read_text(), max_mhz=_lscpu_max_mhz())
