"""Creating a kind's topics before its consumers subscribe, so they never wait on metadata
(or on the broker's auto-creation, which would give them its default partition count), with
the retention the kind needs: opportunistic work may wait in Kafka for as long as the
foreground stays saturated, so its topics keep records for days (the broker's default is a
day and 256 MiB per partition), set on existing topics too."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
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


def retention_configs(retention_ms: int | None) -> dict[str, str]:
    """Topic configs keeping records ``retention_ms`` whatever their size (None: the broker's)."""
    if retention_ms is None:
        return {}
    return {"retention.ms": str(retention_ms), "retention.bytes": "-1"}


async def ensure_topics(
    bootstrap: str, kinds: Iterable[str], retention_ms: Mapping[str, int] | None = None
) -> None:
    """Create the missing topics of ``kinds``; one that appears concurrently is fine. Kinds in
    ``retention_ms`` get that retention, on topics that already existed too."""
    retention = dict(retention_ms or {})
    kinds = list(kinds)
    wanted = {name: (kind, n) for kind in kinds for name, n in topics_of(kind).items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="mt-jobs-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=n,
                replication_factor=REPLICATION,
                topic_configs=retention_configs(retention.get(kind)),
            )
            for name, (kind, n) in sorted(wanted.items())
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *_ in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"cannot create topic {name}")
            log.info("created topics", extra={"topics": [t.name for t in missing]})
        kept = [
            ConfigResource(ConfigResourceType.TOPIC, name, retention_configs(retention[kind]))
            for name, (kind, _) in sorted(wanted.items())
            if name in existing and kind in retention
        ]
        if kept:
            await admin.alter_configs(kept)
    finally:
        await admin.close()
