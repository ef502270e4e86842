"""rqplus: production-grade Redis job queues on top of RQ.

Usage::

    from rqplus import Queue, Worker, task

    @task(queue="emails", priority=3, retry=Retry(max=3, interval=[10, 60]))   # its jobs' defaults
    def send_email(recipient, subject, body): ...

    Queue("emails", connection=redis).enqueue(send_email, "a@example.com", "Hi", "Hello", priority=0)

and on the command line: ``rq worker -w rqplus.Worker --queue-class rqplus.Queue emails``.
"""

from rqplus.async_worker import AsyncWorker
from rqplus.defaults import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from rqplus.exceptions import DurabilityError, ForbiddenJobError, UnknownQueueError, UnsafePickleError, WorkLoopError
from rqplus.priority import priority_of
from rqplus.queue import Queue
from rqplus.task import TaskDefaults, task
from rqplus.thread_worker import ThreadWorker
from rqplus.worker import Worker

__all__ = [
    "AsyncWorker", "DEFAULT_PRIORITY", "MAX_PRIORITY", "MIN_PRIORITY", "DurabilityError", "ForbiddenJobError", "Queue",
    "TaskDefaults", "ThreadWorker", "UnknownQueueError", "UnsafePickleError", "Worker", "WorkLoopError", "priority_of", "task",
]
__version__ = "0.1.0"
