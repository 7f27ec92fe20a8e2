"""The async job platform over Kafka (after Meta's Async/XFaaS): see DESIGN.md §5.

* :class:`Job` and :func:`topic` — the envelope and the topics of a kind (:mod:`.envelope`);
* :class:`JobProducer` — enqueue, acks=all (:mod:`.producer`);
* :class:`Outbox` — publish after a write without losing jobs to a crash (:mod:`.outbox`);
* :class:`Worker` with a :class:`KindConfig` per kind — batches, retries with backoff, dead
  letters, delivery windows, priorities and AIMD concurrency (:mod:`.worker`);
* a :class:`JobClass` per kind — reserved, or opportunistic work that yields to the
  foreground's pressure — and a rate per kind (:mod:`.capacity`, :mod:`.control`).

Delivery is at-least-once: handlers must be idempotent (key effects on ``Job.id``) and must
check the state a job refers to (an outbox job may announce a write that never happened).
"""

from mt_jobs.capacity import JobClass, RateSettings, opportunistic_deadline_ms
from mt_jobs.envelope import DEAD_ATTEMPTS_HEADER, DEAD_REASON_HEADER, Job, Priority, topic
from mt_jobs.outbox import Intent, Outbox
from mt_jobs.policy import Permanent
from mt_jobs.producer import JobProducer
from mt_jobs.worker import KindConfig, KindStats, Worker

__all__ = [
    "DEAD_ATTEMPTS_HEADER",
    "DEAD_REASON_HEADER",
    "Intent",
    "Job",
    "JobClass",
    "JobProducer",
    "KindConfig",
    "KindStats",
    "Outbox",
    "Permanent",
    "Priority",
    "RateSettings",
    "Worker",
    "opportunistic_deadline_ms",
    "topic",
]
