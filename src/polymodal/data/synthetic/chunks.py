"""Running a generator's work units (chunks of records, each with its own seed) on worker
processes, with one progress bar: the output is the same whatever the number of workers."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence

from ...utils import progress_bar


def run_chunks(make_chunk: Callable[[tuple], list[dict]], jobs: Sequence[tuple], total: int, label: str,
               workers: int | None = None, progress: bool = True) -> list[dict]:
    """The records of every job in order; `workers` processes (default: all cores, at most one a job)."""
    workers = workers or min(len(jobs), mp.cpu_count()) or 1
    records: list[dict] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(label, total=total)
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                for chunk in pool.imap(make_chunk, jobs):
                    records += chunk
                    bar.advance(task, len(chunk))
        else:
            for job in jobs:
                chunk = make_chunk(job)
                records += chunk
                bar.advance(task, len(chunk))
    return records
