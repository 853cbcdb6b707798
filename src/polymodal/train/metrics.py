"""Training metrics: `metrics.csv` (one row per logged value) and TensorBoard, on rank 0."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    """metrics.csv (step, name, value rows) beside TensorBoard event files, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume: bool):
        self.enabled = enabled
        self.path = out / "metrics.csv"
        self.writer = None
        if enabled:
            # TensorBoard takes a second to import: only the process that writes pays for it.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
            if not resume and self.path.exists():
                self.path.unlink()

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "name", "value"])
            for k, v in values.items():
                w.writerow([step, k, f"{v:.6g}"])
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
