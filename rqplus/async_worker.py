"""``rqplus.AsyncWorker``: ``async def`` jobs, up to N at once on one event loop of one worker process.

For hundreds to thousands of concurrent I/O-bound jobs (HTTP calls, chat, scraping). A job whose
function is a coroutine function runs on the worker's event loop, stopped at its timeout by
cancellation; a plain function runs in a thread (so it never blocks the loop), stopped as in
:class:`rqplus.ThreadWorker`. Both may share one queue. Everything else (fetching in priority
order, executions, heartbeats, results, ``Retry``, callbacks, rescue, stop) is ThreadWorker's.
``job.return_value()`` holds what the coroutine returned.

Usage::

    RQPLUS_CONCURRENCY=500 rq worker -w rqplus.AsyncWorker --queue-class rqplus.Queue crawl

or from Python: ``rqplus.AsyncWorker(["crawl"], connection=redis, concurrency=500).work()``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
from typing import Any

from rqplus.compat import current_job
from rqplus.thread_worker import DaemonThreads, Running, ThreadWorker
from rqplus.timeouts import timeout_exception

#: Threads for plain (not ``async def``) job functions and for recording jobs' ends, at most.
THREADS = 32


class AsyncWorker(ThreadWorker):
    """An ``rqplus.ThreadWorker`` whose jobs run on an asyncio event loop (see the module's docstring)."""

    concurrency = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._threads = DaemonThreads("rqplus-async", limit=min(self.concurrency, THREADS))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[str, asyncio.Task] = {}  # execution id -> the task running its job

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the jobs run on, in a thread of its own, started on first use."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="rqplus-event-loop", daemon=True).start()
        return self._loop

    def start(self, runs: list[Running]) -> None:
        self.loop.call_soon_threadsafe(self._spawn, runs)

    def _spawn(self, runs: list[Running]) -> None:
        for run in runs:
            task = self.loop.create_task(self.perform_async(run))
            self._tasks[run.execution.id] = task  # the loop keeps only weak references to its tasks
            task.add_done_callback(lambda _, key=run.execution.id: self._tasks.pop(key, None))

    def stop(self, run: Running) -> None:
        """Stop ``run``'s job: a coroutine is cancelled, a plain function stopped in its thread."""
        task = self._tasks.get(run.execution.id)
        if run.ident is None and task is not None:
            self.loop.call_soon_threadsafe(task.cancel)
        else:
            super().stop(run)

    async def perform_async(self, run: Running) -> None:
        """``ThreadWorker.perform`` on the loop: the function awaited here, the bookkeeping in threads."""
        loop, job, handed_over = asyncio.get_running_loop(), run.job, False
        try:
            if not self.begin(run):  # a refused job is recorded failed here: rare, and one transaction
                return
            try:
                return_value = await self.call(run)
            except BaseException:
                outcome: dict[str, Any] = {"exc_info": sys.exc_info()}
            else:
                outcome = {"return_value": return_value}
            if "exc_info" not in outcome and self.batchable(job, outcome["return_value"]):
                handed_over = self.end(run, **outcome)  # queued for the batch: no Redis call here
            else:
                handed_over = await loop.run_in_executor(self._threads, functools.partial(self.end, run, **outcome))
        except Exception:  # the bookkeeping itself failed: the job stays held, for the rescue
            self.log.exception("Worker %s: recording job %s failed", self.name, job.id)
        finally:
            if not handed_over:
                self.release(run)

    async def call(self, run: Running) -> Any:
        """Run ``run``'s function: awaited on the loop if it is a coroutine function, else in a
        thread; either way stopped at the job's timeout."""
        job, timeout, func = run.job, run.job.timeout or self.queue_class.DEFAULT_TIMEOUT, run.job.func
        if not is_coroutine_function(func):
            return await asyncio.get_running_loop().run_in_executor(self._threads, self.call_in_thread, run)
        coroutine = func(*job.args, **job.kwargs)
        with current_job(job):
            try:
                async with asyncio.timeout(None if timeout == -1 else timeout):
                    return await coroutine
            except TimeoutError:
                raise timeout_exception(job.timeout)() from None


def is_coroutine_function(func: Any) -> bool:
    """True for an ``async def`` function, also behind ``functools.partial`` or as a bound method."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func)

