"""Small shared helpers: progress bars, devices, seeds, atomic writes.

Everything imports this module, the command line included, so torch and rich.progress are
imported inside the helpers that need them: `polymodal --help` must not wait for torch."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np


def progress_bar(enabled: bool = True, transient: bool = False, count: bool = True):
    """A rich progress bar with rate-bearing description, percentage, elapsed time and ETA
    (disabled: a no-op with the same API)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


@contextlib.contextmanager
def atomic_path(path: str | Path, merge: bool = False):
    """Yield a temporary sibling path; move it onto `path` only if the block succeeds, so `path`
    is never seen half-written. A directory written at the temporary path replaces a directory at
    `path` whole; with `merge`, each of its entries replaces its namesake in `path` instead, and
    the rest of `path` stays (a model saved into a training run's directory)."""
    path = Path(path)
    # Unique per process and thread: two threads of one server writing the same file (a build and
    # a reload) each get their own temporary path; the last rename wins whole.
    writer = f"{os.getpid()}-{threading.get_ident()}"
    tmp = path / f".staging-{writer}" if merge else path.with_name(f".{path.name}.tmp-{writer}")
    _remove(tmp)  # left by a killed process with the same ids
    try:
        yield tmp
        if merge:
            for entry in tmp.iterdir():
                _replace(entry, path / entry.name)
        else:
            _replace(tmp, path)
    finally:
        _remove(tmp)


def _replace(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir():  # os.replace cannot overwrite a non-empty directory
        shutil.rmtree(dst)
    os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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


def cache_dir() -> Path:
    """Where derived assets live: $POLYMODAL_CACHE, else ~/.cache/polymodal, else (a home that
    cannot be written) the system's temporary folder."""
    path = Path(os.environ.get("POLYMODAL_CACHE") or Path.home() / ".cache" / "polymodal")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / "polymodal-cache"
        path.mkdir(parents=True, exist_ok=True)
    return path
