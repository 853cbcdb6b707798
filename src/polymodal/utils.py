"""Small shared helpers: progress bars, devices, seeds, atomic writes."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np


def progress_bar(enabled: bool = True, transient: bool = False):
    """A rich progress bar with count, rate and ETA (disabled: a no-op with the same API)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[info]}", style="cyan") if False else TextColumn(""),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        disable=not enabled, transient=transient,
    )


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


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
