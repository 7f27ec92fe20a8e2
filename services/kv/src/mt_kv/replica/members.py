"""The replica's membership of its shards (a part of :class:`mt_kv.replica.core.Replica`):
an epoch its primary continues in place (a membership step), a copy dropped once the replica
is no longer a member, and the lease released to the other members on stepping down."""

from __future__ import annotations

import asyncio
import logging

from mt_proto import kv_pb2 as pb

from mt_kv.replica.base import ReplicaBase
from mt_kv.replica.shard import Shard
from mt_kv.replica.tracing import _Note
from mt_kv.rules.shard import Role

log = logging.getLogger(__name__)


class Members(ReplicaBase):
    def _continues(self, shard: Shard, info: pb.ShardInfo) -> bool:
        """The manager moved a shard we lead to the next epoch with us still its primary (a
        membership step): we go on leading it, in place."""
        return (
            info.epoch > shard.epoch
            and info.continues_epoch == shard.epoch
            and info.primary == self.id
            and shard.role is Role.PRIMARY
        )

    def _release(self, shard: Shard, epoch: int) -> None:
        """Tell the shard's other members we stepped down from it in ``epoch`` (and serve no
        strong read of it from now on): the lease they promised us is void, so the next
        primary need not wait it out. Best effort: a member not reached keeps its promise
        until it runs out, as it would without this."""
        released = pb.AppendRequest(
            primary=self.id, released=[pb.Released(shard=shard.id, epoch=epoch)]
        )
        for member in (*shard.replicas, *shard.learners):
            link = self._links.get(member)
            if member != self.id and link is not None and link.connected:
                link.send(released, _Note([], None))

    def _drop(self, shard: Shard) -> None:
        """Forget a shard we are no longer a member of (after a snapshot being copied in is
        done: the next assignment drops it then)."""
        if shard.snapshotting or shard.role is Role.PRIMARY:
            return
        log.info("dropping our copy", extra={"shard": shard.id, "epoch": shard.epoch})
        del self.shards[shard.id]
        self._dropped.add(shard.id)
        self._dirty_metas.discard(shard.id)
        self._fail_waiters(shard, "no longer a member")
        self._tasks.append(asyncio.create_task(self._forget(shard.id), name="kv-drop-shard"))

    async def _forget(self, shard_id: int) -> None:
        await self._checkpointer.wait_idle()  # (a checkpoint taken before may still write it)
        if shard_id in self._dropped:  # (not a member again meanwhile)
            await self.store.drop_shard(shard_id)
