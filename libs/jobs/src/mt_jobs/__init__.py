"""The async job platform over Kafka (after Meta's Async/XFaaS): see DESIGN.md §5.

* :class:`Job` and :func:`topic` — the envelope and the topics of a kind (:mod:`.envelope`);
* :class:`JobProducer` — enqueue, acks=all (:mod:`.producer`);
* :class:`Outbox` — a job written in the same atomic write as the change it announces, then
  published, and relayed if its writer died (:mod:`.outbox`);
* :class:`Worker` with a :class:`KindConfig` per kind — batches, retries with backoff, dead
  letters, delivery windows, priorities and AIMD concurrency (:mod:`.worker`);
* a :class:`JobClass` per kind — reserved, or opportunistic work that yields to the
  foreground's pressure — and a rate per kind (:mod:`.capacity`, :mod:`.control`).

Delivery is at-least-once: handlers must be idempotent (key effects on ``Job.id``, or make
them conditional on the state). A job from the outbox is a fact: its write happened.
"""

from mt_jobs.capacity import JobClass, RateSettings, opportunistic_deadline_ms
from mt_jobs.envelope import DEAD_ATTEMPTS_HEADER, DEAD_REASON_HEADER, Job, Priority, topic
from mt_jobs.outbox import Outbox, Staged
from mt_jobs.policy import Permanent
from mt_jobs.producer import JobProducer
from mt_jobs.worker import KindConfig, KindStats, Worker

__all__ = [
    "DEAD_ATTEMPTS_HEADER",
    "DEAD_REASON_HEADER",
    "Job",
    "JobClass",
    "JobProducer",
    "KindConfig",
    "KindStats",
    "Outbox",
    "Permanent",
    "Priority",
    "RateSettings",
    "Staged",
    "Worker",
    "opportunistic_deadline_ms",
    "topic",
]
