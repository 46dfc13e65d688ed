"""jsqueue: a Celery-style distributed task queue on NATS JetStream."""

from jsqueue.app import App
from jsqueue.beat import run_beat
from jsqueue.canvas import Signature, chain, chord, group
from jsqueue.config import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_URGENT
from jsqueue.context import JobContext, current_job
from jsqueue.errors import (
    ArgumentsError,
    ChildDied,
    ConfigError,
    ConnectError,
    DecodeError,
    GroupFailed,
    JsqueueError,
    NotRegistered,
    PayloadTooLarge,
    ProvisionError,
    PublishError,
    Reject,
    ResultTimeout,
    Retry,
    SerializeError,
    SignatureError,
    SoftTimeLimitExceeded,
    TaskFailed,
    Terminated,
    TimeLimitExceeded,
    WorkerLost,
)
from jsqueue.middleware import Middleware
from jsqueue.progress import Progress
from jsqueue.retry import RetryPolicy
from jsqueue.services.handles import AsyncResult, GroupResult
from jsqueue.services.queues import pause_queue, paused_queues, resume_queue
from jsqueue.services.results import JobState
from jsqueue.task import Task
from jsqueue.worker import run_worker

__version__ = "0.1.0"

__all__ = [
    # building an app
    "App",
    "RetryPolicy",
    "Signature",
    "Task",
    "Middleware",
    # canvas
    "GroupResult",
    "chain",
    "chord",
    "group",
    # running workers and beat in your own process
    "run_beat",
    "run_worker",
    # queues and priorities
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "PRIORITY_URGENT",
    "pause_queue",
    "paused_queues",
    "resume_queue",
    # inside a task
    "JobContext",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "current_job",
    # results
    "AsyncResult",
    "JobState",
    "Progress",
    "ResultTimeout",
    "TaskFailed",
    # errors
    "ArgumentsError",
    "ChildDied",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "GroupFailed",
    "JsqueueError",
    "NotRegistered",
    "PayloadTooLarge",
    "ProvisionError",
    "PublishError",
    "SerializeError",
    "SignatureError",
    "Terminated",
    "TimeLimitExceeded",
    "WorkerLost",
]
