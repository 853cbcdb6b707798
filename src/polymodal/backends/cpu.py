"""What this CPU offers for 8-bit inference, and which engine runs an int8 export fastest on it.

The int8 kernels of ONNX Runtime (MLAS) and OpenVINO (oneDNN) differ most in how they multiply
8-bit numbers: with VNNI (AVX512-VNNI or AVX-VNNI) or AMX one instruction sums 8-bit products in
32 bits; on plain AVX2 the sums pass through 16 bits and saturate unless weights use 7 bits.
"""

from __future__ import annotations

from pathlib import Path

# Tiers, fastest first: the flags /proc/cpuinfo names for each.
INT8_TIERS = (("amx", ("amx_int8",)), ("vnni", ("avx512_vnni", "avx_vnni")), ("avx2", ("avx2",)))

# The engine that ran the ViT-B/32 image tower fastest per tier (benchmarks/int8.py). "vnni": measured
# on AVX-512 VNNI (OpenVINO int8 well ahead); "amx" inherits it (oneDNN has AMX kernels). "avx2":
# ONNX Runtime's dynamic int8 with 7-bit weights measured 1.6x open_clip on an AVX2-only machine
# (issue 16), while OpenVINO int8 with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) ran slower
# than its own float32 here. "none": no 8-bit kernels worth having in either.
FASTEST_ENGINE = {"amx": "openvino", "vnni": "openvino", "avx2": "onnx", "none": "onnx"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def int8_tier(flags: set[str] | None = None) -> str:
    """'amx', 'vnni', 'avx2' or 'none'. Without /proc/cpuinfo, PyTorch's own query of the vector
    unit decides between 'avx2' and 'none' (it does not report VNNI)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        import torch

        return "avx2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "none"
    for tier, names in INT8_TIERS:
        if any(name in flags for name in names):
            return tier
    return "none"


def has_vnni(flags: set[str] | None = None) -> bool:
    """8-bit dot products without saturation (VNNI or AMX)."""
    return int8_tier(flags) in ("amx", "vnni")


def choose_engine(available: list[str], flags: set[str] | None = None) -> str:
    """The fastest engine for this CPU among `available` ("openvino", "onnx")."""
    if not available:
        raise ValueError("no inference engine available")
    best = FASTEST_ENGINE[int8_tier(flags)]
    return best if best in available else available[0]
