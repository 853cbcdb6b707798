"""Small shared helpers: progress bars, devices, seeds, atomic writes."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np


def progress_bar(enabled: bool = True, transient: bool = False, count: bool = True):
    """A rich progress bar with rate-bearing description, percentage, elapsed time and ETA
    (disabled: a no-op with the same API)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn()] if count else []
    columns += [TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled, transient=transient)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str | None = None) -> str:
    import torch

    if name and name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def write_json(path: str | Path, obj) -> None:
    """`obj` as indented JSON at `path`, written whole or not at all."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds. A directory
    written at the temporary path replaces a directory at `path` whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():  # os.replace cannot overwrite a non-empty directory
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()


def fast_bf16(device: str) -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX); elsewhere
    (an AVX2-only CPU, say) bf16 matrix products are emulated and hundreds of times slower."""
    if device.startswith("cuda"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"unknown precision '{precision}' (auto, bf16 or fp32; float16 is very slow on CPUs)")
    return precision
