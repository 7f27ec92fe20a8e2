"""The replica's membership of its shards (a part of :class:`mt_kv.replica.core.Replica`):
an epoch its primary continues in place (a membership step), a planned handover of a shard's
primaryship (from both sides), a copy dropped once the replica is no longer a member, and the
lease released to the other members on stepping down."""

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

    def _handing_over(self, shard: Shard, info: pb.ShardInfo) -> None:
        """The manager asks us to hand ``shard`` to ``info.primary`` as primary of
        ``info.epoch``: we stop sequencing (writes are refused, retried by the clients on the
        successor) and step down once it holds our whole log (see ``_hand_over_if_ready``)."""
        if shard.begin_handover(info.primary, info.epoch):
            log.info("handing over", extra={"shard": shard.id, "to": info.primary})
            self._heartbeat_due = True  # (ask the successor where its log stands now)
            self._schedule_flush()
        self._hand_over_if_ready(shard)

    def _hand_over_if_ready(self, shard: Shard) -> None:
        """Step down and tell the successor to take over, once it may (``handover_ready``)."""
        if not shard.handover_ready():
            return
        successor = pb.Released(
            shard=shard.id,
            epoch=shard.epoch,
            successor_epoch=shard.handover_epoch,
            last_seq=shard.last_seq,
            last_epoch=shard.last_epoch,
            voters=shard.replicas,
            learners=shard.learners,
        )
        to, epoch = shard.handover_to, shard.handover_epoch
        self._become(shard, Role.FOLLOWER, epoch, to, f"handed over to {to}", successor=successor)
        self.report_soon.set()  # the manager shows the successor once it reports leading

    def _take_over(self, shard: Shard, sender: str, handover: pb.Released) -> None:
        """``sender`` handed ``shard`` to us (see ``_hand_over_if_ready``): lead the next epoch
        at once, if our log ends where its did; else the manager's deadline for the handover
        passes and it holds an election."""
        if shard.may_take_over(
            sender,
            handover.epoch,
            handover.last_seq,
            handover.last_epoch,
            handover.successor_epoch,
            handover.voters,
        ):
            shard.set_members(handover.voters, handover.learners)
            self._become(shard, Role.PRIMARY, handover.successor_epoch, self.id, "handed over")
            self.report_soon.set()

    def _release(self, shard: Shard, epoch: int, successor: pb.Released | None = None) -> None:
        """Tell the shard's other members we stepped down from it in ``epoch`` (and serve no
        strong read of it from now on): the lease they promised us is void, so the next
        primary need not wait it out — and, after a handover, tell the successor to take
        over (last: the others are released by then, as far as the links keep order). Best
        effort: a member not reached keeps its promise until it runs out, as it would without
        this; a successor not reached never takes over (the manager elects instead)."""
        released = pb.AppendRequest(
            primary=self.id, released=[pb.Released(shard=shard.id, epoch=epoch)]
        )
        members = [m for m in (*shard.replicas, *shard.learners) if m != self.id]
        to = shard.primary if successor is not None else ""
        for member in sorted(members, key=lambda m: m == to):
            link = self._links.get(member)
            if link is None or not link.connected:
                continue
            if member == to:
                assert successor is not None
                link.send(pb.AppendRequest(primary=self.id, released=[successor]), _Note([], None))
            else:
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
