"""Enqueueing jobs: an idempotent, acks=all Kafka producer that waits for the broker's ack.

The producer itself comes from :func:`mt_core.messaging.kafka_producer`; this module adds the
job-specific parts: which topic a job goes to, its key, and the trace context in its headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from mt_core.messaging import Headers, inject_headers, kafka_producer

from mt_jobs.envelope import Job, Priority, topic


class JobProducer:
    """``async with JobProducer(bootstrap) as jobs: await jobs.enqueue(Job("fanout", {...}))``."""

    def __init__(self, bootstrap: str, *, client_id: str = "mt-jobs") -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._stack = AsyncExitStack()
        self._producer: Any = None

    async def __aenter__(self) -> JobProducer:
        self._producer = await self._stack.enter_async_context(
            kafka_producer(self._bootstrap, self._client_id)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._producer = None
        await self._stack.aclose()

    async def submit(
        self, job: Job, *, topic_name: str | None = None, headers: Headers = ()
    ) -> asyncio.Future[Any]:
        """Hand ``job`` to the producer's buffer and return the future of the broker's ack.

        The topic defaults to the job's (``jobs.<kind>`` or ``.high``); the current trace context
        is added to ``headers``. Submitting many and then awaiting them all pipelines the sends.
        """
        return await self._send(topic_name or default_topic(job), job, job.encode(), headers)

    async def enqueue(self, job: Job) -> None:
        """Publish ``job`` and wait until the broker has it (acks=all)."""
        await (await self.submit(job))

    async def enqueue_many(self, jobs: Sequence[Job]) -> None:
        """Publish all ``jobs``: all sent, then all acks awaited. Every payload is encoded first,
        so a bad one sends nothing; if a send fails, the first error is raised once all ended."""
        encoded = [(job, job.encode()) for job in jobs]
        futures = [await self._send(default_topic(job), job, value, ()) for job, value in encoded]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def send_raw(
        self, topic_name: str, value: bytes, *, key: bytes | None, headers: Headers = ()
    ) -> asyncio.Future[Any]:
        """Like :meth:`submit` for a value that is not a job (a dead letter of a record that
        could not be decoded keeps its original bytes)."""
        if self._producer is None:
            raise RuntimeError("use JobProducer as an async context manager")
        future: asyncio.Future[Any] = await self._producer.send(
            topic_name, value=value, key=key, headers=inject_headers(headers)
        )
        return future

    async def _send(
        self, topic_name: str, job: Job, value: bytes, headers: Headers
    ) -> asyncio.Future[Any]:
        return await self.send_raw(topic_name, value, key=job.routing_key.encode(), headers=headers)


def default_topic(job: Job) -> str:
    return topic(job.kind, "high" if job.priority == Priority.HIGH else "")
