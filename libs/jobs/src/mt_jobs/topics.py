"""Creating a kind's topics before its consumers subscribe, so they never wait on metadata
(or on the broker's auto-creation, which would give them its default partition count)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from mt_jobs.envelope import topic

log = logging.getLogger(__name__)

PARTITIONS = 4  # work topics: up to 4 workers of a kind share the load
DEAD_PARTITIONS = 1  # dead letters are read by operators, in order
REPLICATION = 1  # the local stack runs a single broker


def topics_of(kind: str) -> dict[str, int]:
    """A kind's topics and their partition counts."""
    work = {topic(kind, suffix): PARTITIONS for suffix in ("", "high", "retry")}
    return {**work, topic(kind, "dead"): DEAD_PARTITIONS}


async def ensure_topics(bootstrap: str, kinds: Iterable[str]) -> None:
    """Create the missing topics of ``kinds``; one that appears concurrently is fine."""
    wanted = {name: n for kind in kinds for name, n in topics_of(kind).items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="mt-jobs-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=n, replication_factor=REPLICATION)
            for name, n in sorted(wanted.items())
            if name not in existing
        ]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for name, code, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise for_code(code)(f"cannot create topic {name}")
        log.info("created topics", extra={"topics": [t.name for t in missing]})
    finally:
        await admin.close()
