"""Dynamic batching: concurrent requests share one forward pass (as Triton's dynamic batcher and
infinity's batch handler do).

Each request submits a job and awaits its future. One collector task takes the queued jobs and
runs `run_batch(jobs)` on the inference executor, off the event loop; while that batch runs, the
next one gathers. Before running, it waits up to `max_wait_s` for more jobs, but only as many as
the last batch held (at most `max_batch` inputs): under load the batch fills up, and a lone
client, whose last batch held one job, never waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger(__name__)


class MicroBatcher:
    """`await batcher.submit(job, size)` -> that job's result from `run_batch(jobs) -> results`.

    `size` is how many inputs the job brings (texts, images): a batch holds at most `max_batch`
    inputs, but always at least one job. A batch that raises is rerun job by job, so one bad
    job fails alone and never the requests that happened to share its batch.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], executor: Executor,
                 max_batch: int = 32, max_wait_s: float = 0.0):
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: list[tuple[Any, int, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._collector: asyncio.Task | None = None
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes (jobs), for the tests
        self._expected = 1  # inputs the last batch held: how many to wait for

    async def submit(self, job: Any, size: int = 1) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((job, size, future))
        if self._collector is None or self._collector.done():
            self._arrived = asyncio.Event()
            self._collector = asyncio.create_task(self._collect())
        self._arrived.set()
        return await future

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)

    async def _collect(self) -> None:
        while True:
            await self._arrived.wait()
            await self._gather_more()
            batch = self._take()
            if not self._queue:
                self._arrived.clear()
            if batch:
                await self._run(batch)

    async def _gather_more(self) -> None:
        """Wait up to max_wait_s for as many inputs as the last batch had (or a full batch)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        target = min(self.max_batch, self._expected)
        while self._inputs() < target and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break

    def _inputs(self) -> int:
        return sum(size for _, size, _ in self._queue)

    def _take(self) -> list[tuple[Any, asyncio.Future]]:
        taken, total = 0, 0
        for _, size, _ in self._queue:
            if taken and total + size > self.max_batch:
                break
            taken, total = taken + 1, total + size
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        self._expected = total
        return [(job, future) for job, _, future in batch if not future.done()]  # done: the client went away

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        self.batch_sizes.append(len(batch))
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [job for job, _ in batch])
        except Exception as err:
            if len(batch) == 1:
                _settle(batch[0][1], error=err)
                return
            log.debug("a batch of %d failed (%s); rerunning job by job", len(batch), err)
            for job, future in batch:
                await self._run([(job, future)])
            return
        for (_, future), result in zip(batch, results):
            _settle(future, result=result)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
