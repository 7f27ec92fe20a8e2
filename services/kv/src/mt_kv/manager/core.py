"""Shard manager logic: who is primary of each shard, under which epoch.

Failover in two steps, so a lost primary's committed writes are never lost:
1. fence — the shard moves to a new epoch with no primary; replicas learn it from their next
   heartbeat and from then on refuse the old primary, so their logs stop growing;
2. elect — once a majority reports the new epoch, the one with the most up-to-date log
   (highest (last_epoch, last_seq), as in Raft) becomes primary in that epoch. Every committed
   entry is on a majority, so on at least one fenced replica, so on the winner.
The state (epochs, primaries) is kept in a JSON file so epochs never go backwards.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mt_proto import kv_pb2 as pb

from mt_kv.manager.autosplit import ShardSize
from mt_kv.manager.placement import Copyset, Planned, plan
from mt_kv.manager.quotas import Quotas
from mt_kv.manager.reconfig import Reconfigs, ReplicaMove

log = logging.getLogger(__name__)

REBALANCE_QUIET_S = 2.0  # no primary moves for this long before a rebalancing move
HANDOVER_TIMEOUT_S = 1.0  # a planned handover not done by then: fence and elect instead
REPLICATION_FACTOR = 3  # voters per shard
MAX_REPLICA_MOVES = 2  # copies being moved at once (each costs its target a catch-up)


@dataclass
class ShardAssignment:
    id: int
    epoch: int = 0
    primary: str = ""
    replicas: list[str] = field(default_factory=list)
    fenced_at: float = 0.0  # monotonic time the current epoch started without a primary
    lost_primary: str = ""  # the primary being replaced, for the failover record
    assigned_beat: int = 0  # the primary's heartbeat count when it was assigned
    planned: str = ""  # a rebalancing handoff's intended primary (wins ties in the election)
    min_read_seq: int = 0  # the latest μshard import's seq (see ShardInfo.min_read_seq)
    learners: list[str] = field(default_factory=list)
    stable: list[str] = field(default_factory=list)  # the voters last known established
    # An epoch continued in place is shown to its primary first: the others see the epoch
    # before (with its voters) until the primary reports the new one, so they never refuse
    # its Appends as stale meanwhile (they adopt the new epoch from them).
    continues_epoch: int = 0
    prev_replicas: list[str] = field(default_factory=list)
    # A planned handover to ``primary`` of this epoch: shown to this replica (leading the epoch
    # before) only, until ``primary`` reports leading; since ``handover_at`` (monotonic).
    handover_from: str = ""
    handover_at: float = 0.0
    # The primary's process as it was when it was named or last reported leading (0: not
    # known yet): another one is a restart, which may have lost the epoch it led.
    primary_incarnation: int = 0


@dataclass
class ReplicaView:
    id: str
    addr: str
    repl_addr: str = ""  # its replication link, as it reports it
    pid: int = 0
    incarnation: int = 0
    last_seen: float = -1e9
    beats: int = 0
    progress: dict[int, pb.ShardProgress] = field(default_factory=dict)


@dataclass
class Move:
    """A μshard on its way from one shard to another (see mover.py); saved with the state."""

    microshard: int
    from_shard: int
    to_shard: int
    step: str = "precopy"  # precopy -> fence -> copy -> unfence -> flip -> purge -> done
    keys: int = 0
    delta_keys: int = 0
    precopy_seq: int = 0  # the old shard's position the pre-copy was taken at (0: none)
    import_seq: int = 0
    error: str = ""
    fenced_at: float = 0.0  # wall-clock time of the fence
    fenced_ms: int = 0  # fence -> flip, once flipped

    def info(self) -> pb.MicroshardMove:
        return pb.MicroshardMove(
            microshard=self.microshard,
            from_shard=self.from_shard,
            to_shard=self.to_shard,
            step=self.step,
            keys=self.keys,
            delta_keys=self.delta_keys,
            import_seq=self.import_seq,
            error=self.error,
            fenced_ms=self.fenced_ms,
        )


@dataclass(frozen=True)
class FailoverRecord:
    shard: int
    epoch: int
    from_replica: str
    to_replica: str
    at_ms: int
    detect_ms: int


class ShardManager:
    def __init__(
        self,
        replicas: dict[str, str],
        shards: int,
        microshards: int,
        state_path: Path | None,
        failover_timeout_ms: int,
        lease_ms: int,
        clock: Callable[[], float] = time.monotonic,
        quotas: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self._clock = clock
        self.replicas = {rid: ReplicaView(rid, addr) for rid, addr in replicas.items()}
        self.order = list(replicas)
        self.added: dict[str, str] = {}  # replicas added at run time (saved) -> address
        self.draining: set[str] = set()  # replicas being emptied (saved)
        self.microshards = microshards
        self.failover_timeout_s = failover_timeout_ms / 1000
        self.lease_ms = lease_ms
        self.state_path = state_path
        self.shards = [ShardAssignment(i, replicas=self._initial(i)) for i in range(shards)]
        self.configured_shards = shards  # more once split (saved)
        # μshard -> shard: round robin over the configured shards until live resharding
        # moves one.
        self.mapping = [u % shards for u in range(microshards)]
        # new shard -> (the shard split, its μshards still to move there): see split()
        self.splits: dict[int, tuple[int, list[int]]] = {}
        self.moves: dict[int, Move] = {}  # by μshard: in progress, and the last finished ones
        self.failovers: deque[FailoverRecord] = deque(maxlen=200)
        self.routing_version = 0
        self._lost_at: dict[int, float] = {}  # shard -> when its primary was last heard of
        self._started = self._clock()
        self._last_change = self._started
        self.reconfigs = Reconfigs(self)
        self.quotas = Quotas(quotas or {})
        # replica -> [(shard, keys/s, [(μshard, keys/s)...])...]: its last load report
        self.served: dict[str, list[tuple[int, float, list[tuple[int, float]]]]] = {}
        self.notes: list[str] = []  # what placement by load noticed and left alone
        self._load()

    def _initial(self, shard_id: int) -> list[str]:
        """A new shard's voters: ``REPLICATION_FACTOR`` replicas in turn (all of three)."""
        n = len(self.order)
        return [self.order[(shard_id + k) % n] for k in range(min(REPLICATION_FACTOR, n))]

    def now(self) -> float:
        return self._clock()

    # ---------------------------------------------------------------- persistence

    def _load(self) -> None:
        if self.state_path is not None and self.state_path.exists():
            self.restore(json.loads(self.state_path.read_text()))

    def restore(self, saved: dict[str, Any]) -> None:
        """Take up the state :meth:`state` gave (saved before a restart)."""
        for rid, addr in saved.get("added", {}).items():
            self.add_replica(rid, addr)
        self.draining = set(saved.get("draining", [])) & set(self.replicas)
        for entry in saved["shards"][len(self.shards) :]:  # shards made by splits
            if entry["id"] == len(self.shards):
                self.shards.append(ShardAssignment(entry["id"]))
        for entry in saved["shards"]:
            if entry["id"] < len(self.shards):
                shard = self.shards[entry["id"]]
                shard.epoch, shard.primary = entry["epoch"], entry["primary"]
                shard.min_read_seq = entry.get("min_read_seq", 0)
                # (state saved before replica sets: every shard on the configured replicas)
                shard.replicas = entry.get("replicas", shard.replicas)
                shard.learners = entry.get("learners", [])
                shard.stable = entry.get("stable", [])
                shard.continues_epoch = entry.get("continues_epoch", 0)
                shard.prev_replicas = entry.get("prev_replicas", [])
                shard.handover_from = entry.get("handover_from", "")
                shard.handover_at = self._clock()  # (its deadline counts from our start)
        for saved_reconfig in saved.get("reconfigs", []):
            reconfig = ReplicaMove(**saved_reconfig, started_at=self._clock())
            if reconfig.shard < len(self.shards):
                self.reconfigs.moves[reconfig.shard] = reconfig
        self.quotas.restore(saved.get("quotas", {}))
        for new, (source, remaining) in saved.get("splits", {}).items():
            if int(new) < len(self.shards):
                self.splits[int(new)] = (source, remaining)
        self.routing_version = saved.get("routing_version", 0)
        for u, target in saved.get("moved", {}).items():
            if int(u) < len(self.mapping) and target < len(self.shards):
                self.mapping[int(u)] = target
        known = {f.name for f in fields(Move)}
        for saved_move in saved.get("moves", []):
            move = Move(**{k: v for k, v in saved_move.items() if k in known})
            shards = len(self.shards)
            if move.microshard < len(self.mapping) and max(move.from_shard, move.to_shard) < shards:
                self.moves[move.microshard] = move
            else:  # the cluster was configured smaller since: nothing to resume
                log.warning("dropping a saved μshard move out of range", extra=asdict(move))

    def state(self) -> dict[str, Any]:
        """What survives a restart (see :meth:`restore`), as JSON-ready data."""
        return {
            "routing_version": self.routing_version,
            "added": self.added,
            "draining": sorted(self.draining),
            "quotas": self.quotas.overrides,
            "splits": {str(new): split for new, split in self.splits.items()},
            "shards": [
                {
                    "id": s.id,
                    "epoch": s.epoch,
                    "primary": s.primary,
                    "min_read_seq": s.min_read_seq,
                    "replicas": s.replicas,
                    "learners": s.learners,
                    "stable": s.stable,
                    "continues_epoch": s.continues_epoch,
                    "prev_replicas": s.prev_replicas,
                    "handover_from": s.handover_from,
                }
                for s in self.shards
            ],
            "reconfigs": [
                {"shard": m.shard, "source": m.source, "target": m.target, "step": m.step}
                for m in self.reconfigs.moves.values()
            ],
            # μshards not where round robin puts them, and the moves' progress.
            "moved": {
                str(u): target
                for u, target in enumerate(self.mapping)
                if target != u % self.configured_shards
            },
            "moves": [asdict(m) for m in self.moves.values()],
        }

    def save(self) -> None:
        """Persist the state (epochs, primaries, the μshard map and moves); bumps the routing
        table's version."""
        self.routing_version += 1
        if self.state_path is None:  # kept in memory only (the simulation's manager)
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        data = self.state()
        with tmp.open("w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.state_path)

    # ---------------------------------------------------------------- liveness

    def alive(self, rid: str, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        return now - self.replicas[rid].last_seen < self.failover_timeout_s

    def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        view = self.replicas.get(req.replica_id)
        if view is None:
            raise KeyError(req.replica_id)
        view.last_seen = self._clock()
        view.beats += 1
        view.pid = req.pid
        view.incarnation = req.incarnation
        if req.addr:
            view.addr = req.addr
        view.repl_addr = req.repl_addr
        view.progress = {p.shard: p for p in req.shards}
        self.quotas.observe(req.replica_id, req.load)
        self.served[req.replica_id] = [
            (s.shard, s.ops_per_s, [(h.microshard, h.ops_per_s) for h in s.hot])
            for s in req.shard_load
        ]
        self.tick()
        return pb.HeartbeatResponse(
            shards=self.shard_infos(req.replica_id),
            lease_ms=self.lease_ms,
            repl_addrs={r.id: r.repl_addr for r in self.replicas.values() if r.repl_addr},
            quota_ops=self._quota_shares(req.replica_id),
            microshards=self.microshards,
            bytes_full=self._bytes_full(),
        )

    def _bytes_full(self) -> list[str]:
        if not self.quotas.bytes_limits:
            return []
        now = self._clock()
        return self.quotas.update_full([r for r in self.replicas if self.alive(r, now)])

    def _quota_shares(self, rid: str) -> dict[str, float]:
        """``rid``'s shares of the keyspaces' quotas, split among the live primaries."""
        if not self.quotas.limits:
            return {}
        now = self._clock()
        serving = {s.primary for s in self.shards if s.primary and self.alive(s.primary, now)}
        return self.quotas.shares(rid, serving)

    def tick(self) -> None:
        """Fence shards whose primary is lost; elect where a majority is fenced."""
        now = self._clock()
        changed = False
        # Just (re)started, we have not heard from anyone yet: silence is not loss.
        settled = now - self._started >= self.failover_timeout_s
        for shard in self.shards:
            if shard.handover_from and now - shard.handover_at > HANDOVER_TIMEOUT_S:
                log.warning(
                    "handover not done in time; fencing",
                    extra={"shard": shard.id, "from": shard.handover_from, "to": shard.primary},
                )
                self._fence_for(shard, shard.primary)
                changed = True
            if shard.primary and settled and self._primary_lost(shard, now):
                # Never heard from since we started: count from our start, not from the epoch.
                heard = max(self.replicas[shard.primary].last_seen, self._started)
                self._lost_at.setdefault(shard.id, heard)
                log.warning(
                    "primary lost; fencing", extra={"shard": shard.id, "primary": shard.primary}
                )
                self._next_epoch(shard)
                shard.fenced_at = now
                shard.lost_primary, shard.primary = shard.primary, ""
                changed = True
            if not shard.primary:
                changed |= self._elect(shard, now)
        if changed:
            self._last_change = now  # primaries changed: rebalancing waits for quiet
        for shard in self.shards:
            changed |= self._observe(shard)
        changed |= self.reconfigs.advance(now)
        changed |= self._rebalance(now)
        if changed:
            self.save()

    def _rebalance(self, now: float) -> bool:
        """When all is quiet: start the replica moves placement wants (copies even across
        replicas, draining ones emptied), else move one primary from a replica leading two
        more than another voter of that shard (after failovers, a late start, new replicas),
        once that voter's log has caught up. A primary moves by a fence + election like a
        failover's, the target winning the tie; the shard's writes wait out one lease."""
        if now - self._last_change < REBALANCE_QUIET_S:
            return False
        planned = self._copies_wanted(now)
        for move in planned:
            log.info("placing", extra={"shard": move.shard, "from": move.source, "to": move.target})
            self.reconfigs.request(move.shard, move.source, move.target)
        if planned:
            return True
        wanted = self._primary_wanted(now)
        if wanted is None or not self._caught_up(*wanted):
            return False
        shard, target = wanted
        log.info("rebalancing", extra={"shard": shard.id, "from": shard.primary, "to": target})
        self.hand_off(shard.id, target)
        self._last_change = now
        return True

    def _copies_wanted(self, now: float) -> list[Planned]:
        if any(not s.primary for s in self.shards):
            return []
        moving = {m.shard for m in self.reconfigs.active()}
        copysets = [
            Copyset(s.id, tuple(s.replicas), s.primary, s.id in moving or bool(s.learners))
            for s in self.shards
        ]
        busy = {r for m in self.reconfigs.active() for r in (m.source, m.target)}
        live = [rid for rid in self.order if self.alive(rid, now) and rid not in self.draining]
        draining = [rid for rid in self.order if rid in self.draining]
        return plan(copysets, live, draining, busy, MAX_REPLICA_MOVES)

    def _primary_wanted(self, now: float) -> tuple[ShardAssignment, str] | None:
        """(shard, voter to lead it) lowering the busiest primary count by one, if the
        counts of that shard's voters differ by two or more; None if none does."""
        if any(not s.primary for s in self.shards) or self.reconfigs.active():
            return None
        takers = [r for r in self.order if self.alive(r, now) and r not in self.draining]
        led = dict.fromkeys(takers, 0)
        for shard in self.shards:
            led[shard.primary] = led.get(shard.primary, 0) + 1
        for shard in sorted(self.shards, key=lambda s: -led[s.primary]):
            voters = [r for r in shard.replicas if r in takers and r != shard.primary]
            if not voters:
                continue
            target = min(voters, key=lambda r: (led[r], r))
            if shard.primary in self.draining or led[shard.primary] - led[target] >= 2:
                return shard, target
        return None

    def _caught_up(self, shard: ShardAssignment, target: str) -> bool:
        theirs = self.replicas[shard.primary].progress.get(shard.id)
        ours = self.replicas[target].progress.get(shard.id)
        return bool(
            theirs
            and ours
            and (ours.last_epoch, ours.last_seq) >= (theirs.last_epoch, theirs.last_seq)
        )

    def hand_off(self, shard_id: int, target: str) -> None:
        """A planned move of a shard's primary to ``target`` (a voter of it): the next epoch,
        led by ``target``, shown first to the primary alone, which stops writing, waits until
        ``target`` holds its whole log, steps down and tells it to take over (Raft's
        leadership transfer: writes wait a few milliseconds, not an election's heartbeats).
        Without a live primary leading its epoch, or not done in ``HANDOVER_TIMEOUT_S``: a
        fence and an election, ``target`` winning the tie."""
        shard = self.shards[shard_id]
        source = shard.primary
        theirs = self.replicas[source].progress.get(shard.id) if source else None
        leading = theirs is not None and theirs.primary and theirs.epoch == shard.epoch
        if (
            leading
            and self.alive(source)
            and target in shard.replicas
            and target != source
            and not shard.continues_epoch
            and not shard.handover_from
        ):
            shard.epoch += 1
            shard.primary, shard.handover_from = target, source
            shard.handover_at = self._clock()
            shard.assigned_beat = self.replicas[target].beats
            shard.primary_incarnation = self.replicas[target].incarnation
            log.info("handing over", extra={"shard": shard.id, "from": source, "to": target})
            self.save()  # (saved before any heartbeat publishes it: epochs never go backwards)
            return
        self._fence_for(shard, target)

    def _fence_for(self, shard: ShardAssignment, target: str) -> None:
        """A fence and an election like a failover's, with ``target`` winning the tie: writes
        wait a moment, strong reads out the old primary's lease."""
        self._next_epoch(shard)
        shard.fenced_at = self._clock()
        shard.planned, shard.primary = target, ""
        self.save()  # (saved before any heartbeat publishes it: epochs never go backwards)

    def _next_epoch(self, shard: ShardAssignment) -> None:
        """A new epoch, published to every replica at once (a fence)."""
        shard.epoch += 1
        shard.continues_epoch, shard.prev_replicas = 0, []
        shard.handover_from = ""

    def step_in_place(self, shard: ShardAssignment, voters: list[str]) -> None:
        """The next epoch with ``voters``, its primary going on leading (a membership step):
        shown to the primary first (see ShardAssignment.continues_epoch)."""
        assert shard.primary in voters, (shard.primary, voters)
        shard.prev_replicas, shard.replicas = list(shard.replicas), list(voters)
        shard.continues_epoch = shard.epoch
        shard.epoch += 1
        shard.assigned_beat = self.replicas[shard.primary].beats
        log.info("voters", extra={"shard": shard.id, "epoch": shard.epoch, "voters": voters})

    def established(self, shard: ShardAssignment) -> bool:
        """The shard's primary applied an entry of its epoch: an entry committed under the
        epoch's voters, so every earlier one is on a majority of them too."""
        if not shard.primary or not self.alive(shard.primary):
            return False
        theirs = self.replicas[shard.primary].progress.get(shard.id)
        return (
            theirs is not None
            and theirs.primary
            and theirs.epoch == shard.epoch
            and theirs.applied_epoch == shard.epoch
        )

    def _observe(self, shard: ShardAssignment) -> bool:
        """What the primary's reports settle: a continued epoch it took (shown to all from
        now on), voters established."""
        changed = False
        theirs = self.replicas[shard.primary].progress.get(shard.id) if shard.primary else None
        if shard.continues_epoch and theirs is not None and theirs.epoch >= shard.epoch:
            shard.continues_epoch, shard.prev_replicas = 0, []
            changed = True
        leads = theirs is not None and theirs.primary and theirs.epoch == shard.epoch
        if leads and not shard.primary_incarnation:  # (named before our own restart)
            shard.primary_incarnation = self.replicas[shard.primary].incarnation
        if shard.handover_from and theirs is not None and theirs.epoch >= shard.epoch:
            # (it leads our epoch — or one after, if it was fenced meanwhile: then so are we)
            log.info("handed over", extra={"shard": shard.id, "to": shard.primary})
            shard.handover_from = ""
            changed = True
        if shard.stable != shard.replicas and self.established(shard):
            shard.stable = list(shard.replicas)
            changed = True
        return changed

    def add_replica(self, rid: str, addr: str) -> None:
        """A replica joins the cluster (it holds nothing until shards are moved to it)."""
        if rid in self.replicas:  # (again: a drained one started anew, say)
            self.replicas[rid].addr = addr or self.replicas[rid].addr
            self.draining.discard(rid)
            return
        self.replicas[rid] = ReplicaView(rid, addr)
        self.order.append(rid)
        self.added[rid] = addr

    def placement_settled(self) -> bool:
        """Every shard has a live primary, no replica move is under way and none is wanted:
        copies and primaries stay where they are until something fails or changes."""
        now = self._clock()
        return (
            self.healthy()
            and not self.reconfigs.active()
            and not self._copies_wanted(now)
            and self._primary_wanted(now) is None
        )

    def _primary_lost(self, shard: ShardAssignment, now: float) -> bool:
        if not self.alive(shard.primary, now):
            return True
        # Restarted since it was named: its store may lack the epoch it led (a primary acts on
        # an epoch before syncing it; its followers may commit its first entry meanwhile), so
        # it must not be shown that epoch again — a new one, and an election by the logs.
        view = self.replicas[shard.primary]
        if shard.primary_incarnation and view.incarnation != shard.primary_incarnation:
            return True
        # Alive but restarted: it reports our epoch without being primary (it never resumes
        # an epoch it loaded from disk), so a new epoch is needed.
        # Two heartbeats after its assignment it must have taken the role (the response to the
        # first carried it).
        progress = view.progress.get(shard.id)
        return (
            progress is not None
            and progress.epoch == shard.epoch
            and not progress.primary
            and view.beats >= shard.assigned_beat + 2
        )

    def _elect(self, shard: ShardAssignment, now: float) -> bool:
        changed = False
        if shard.epoch == 0:
            shard.epoch, shard.fenced_at = 1, now  # first start: fence epoch 1, then elect
            changed = True
        fenced = [
            rid
            for rid in shard.replicas
            if self.alive(rid, now)
            and (p := self.replicas[rid].progress.get(shard.id)) is not None
            and p.epoch >= shard.epoch
        ]
        if len(fenced) < len(shard.replicas) // 2 + 1:
            return changed
        live = [rid for rid in shard.replicas if self.alive(rid, now)]
        if shard.epoch == 1 and len(fenced) < len(shard.replicas) and now - shard.fenced_at < 3:
            # First start: give every replica a moment to report, so primaries spread evenly
            # instead of all landing on the first two that came up.
            return changed
        # A live replica has yet to report the new epoch: hear it out — unless the planned
        # primary has (a handoff: any fenced majority holds every committed entry).
        heard = shard.planned in fenced
        if len(fenced) < len(live) and now - shard.fenced_at < 1 and not heard:
            return changed

        def rank(rid: str) -> tuple[int, int, int]:
            p = self.replicas[rid].progress[shard.id]
            preferred = shard.planned or shard.replicas[0]
            return (p.last_epoch, p.last_seq, 1 if rid == preferred else 0)

        winner = max(fenced, key=rank)
        shard.primary, shard.planned = winner, ""
        shard.assigned_beat = self.replicas[winner].beats
        shard.primary_incarnation = self.replicas[winner].incarnation
        lost_at = self._lost_at.pop(shard.id, None)
        origin, shard.lost_primary = shard.lost_primary, ""
        if lost_at is not None:
            record = FailoverRecord(
                shard.id,
                shard.epoch,
                origin,
                winner,
                int(time.time() * 1000),
                int((now - lost_at) * 1000),
            )
            self.failovers.append(record)
            log.warning("failover", extra=asdict(record))
        else:
            log.info(
                "primary assigned",
                extra={"shard": shard.id, "epoch": shard.epoch, "primary": winner},
            )
        return True

    # ---------------------------------------------------------------- views

    def shard_infos(self, for_replica: str = "") -> list[pb.ShardInfo]:
        """Every shard's assignment, as ``for_replica`` is to see it (see continues_epoch)."""
        return [self._info(s, for_replica) for s in self.shards]

    def _info(self, s: ShardAssignment, for_replica: str) -> pb.ShardInfo:
        addrs = {rid: view.addr for rid, view in self.replicas.items()}
        members = [*s.replicas, *s.learners]
        info = pb.ShardInfo(
            id=s.id,
            epoch=s.epoch,
            primary=s.primary,
            replicas=s.replicas,
            learners=s.learners,
            addrs={rid: addrs[rid] for rid in members},
            min_read_seq=s.min_read_seq,
            continues_epoch=s.continues_epoch,
        )
        if s.handover_from:  # the epoch before, but to the replica handing it over
            if for_replica == s.handover_from:
                info.handover_from = s.handover_from
            else:
                info.epoch, info.primary = s.epoch - 1, s.handover_from
            return info
        if s.continues_epoch and for_replica != s.primary:  # the epoch before, for now
            del info.replicas[:], info.learners[:]
            info.replicas.extend(s.prev_replicas)
            info.learners.extend(r for r in members if r not in s.prev_replicas)
            info.epoch, info.continues_epoch = s.continues_epoch, 0
            info.addrs.update({rid: addrs[rid] for rid in s.prev_replicas})
        return info

    def routing_table(self) -> pb.RoutingTable:
        return pb.RoutingTable(
            version=self.routing_version,
            microshards=self.microshards,
            shards=self.shard_infos(),
            replicas=self.replica_infos(),
            microshard_to_shard=self.mapping,
            quota_keyspaces=self.quotas.keyspaces(),
        )

    def replica_infos(self) -> list[pb.ReplicaInfo]:
        return [self.replica_info(rid) for rid in self.replicas]

    def replica_info(self, rid: str) -> pb.ReplicaInfo:
        now, v = self._clock(), self.replicas[rid]
        held = sum(rid in s.replicas or rid in s.learners for s in self.shards)
        state = "active" if rid not in self.draining else "draining" if held else "drained"
        return pb.ReplicaInfo(
            id=v.id,
            addr=v.addr,
            repl_addr=v.repl_addr,
            pid=v.pid,
            alive=self.alive(v.id, now),
            applied_seq=sum(p.applied_seq for p in v.progress.values()),
            last_heartbeat_ms_ago=min(int((now - v.last_seen) * 1000), 2**32 - 1),
            state=state,
            shards=sum(rid in s.replicas for s in self.shards),
            primaries=sum(rid == s.primary for s in self.shards),
            ops_per_s=sum(e.offered_per_s for e in self.quotas.load.get(rid, {}).values()),
        )

    def drain(self, rid: str) -> None:
        """Empty ``rid``: its copies move to the others (its primaries handed over first),
        then it may stop. Refused if fewer than a shard's voters would be left."""
        if rid not in self.replicas:
            raise ValueError(f"no replica {rid!r}")
        left = [r for r in self.replicas if r != rid and r not in self.draining]
        if len(left) < REPLICATION_FACTOR:
            raise ValueError(f"draining {rid} would leave {len(left)} replicas for 3 copies")
        self.draining.add(rid)
        self._last_change -= REBALANCE_QUIET_S  # (no need to wait for quiet: start now)
        self.save()

    def healthy(self) -> bool:
        """Every shard has a live primary."""
        now = self._clock()
        return all(s.primary and self.alive(s.primary, now) for s in self.shards)

    def status(self) -> pb.StatusResponse:
        failovers = [
            pb.Failover(
                shard=f.shard,
                epoch=f.epoch,
                from_replica=f.from_replica,
                to_replica=f.to_replica,
                at_ms=f.at_ms,
                detect_ms=f.detect_ms,
            )
            for f in self.failovers
        ]
        return pb.StatusResponse(
            shards=self.shard_infos(),
            replicas=self.replica_infos(),
            failovers=failovers,
            placement_settled=self.placement_settled(),
            moves=[m.info() for m in self.moves.values()],
            reconfigs=[m.info() for m in self.reconfigs.moves.values()],
            quotas=self.quotas.use([r for r in self.replicas if self.alive(r)]),
            notes=self.notes,
            splits=[
                pb.Split(shard=source, new_shard=new, remaining=remaining)
                for new, (source, remaining) in self.splits.items()
            ],
        )

    def shard_sizes(self) -> list[ShardSize]:
        """Each shard with a live primary: the keys it holds and serves, as that primary last
        reported them (``autosplit.py`` decides from these)."""
        now = self._clock()
        counts = Counter(self.mapping)
        served = {
            (rid, shard): (rate, hot)
            for rid, shards in self.served.items()
            for shard, rate, hot in shards
        }
        sizes = []
        for s in self.shards:
            if not s.primary or not self.alive(s.primary, now):
                continue
            progress = self.replicas[s.primary].progress.get(s.id)
            rate, hot = served.get((s.primary, s.id), (0.0, []))
            busiest = max((r for _, r in hot), default=0.0)
            items = progress.items if progress is not None else 0
            sizes.append(ShardSize(s.id, items, rate, busiest, counts[s.id]))
        return sizes

    def split(self, shard_id: int) -> pb.Split:
        """Split ``shard_id``: a new shard, on the 3 live replicas holding the fewest copies,
        to which every other of its μshards moves, one at a time (the Mover's work)."""
        if not 0 <= shard_id < len(self.shards):
            raise ValueError(f"no shard {shard_id}")
        if any(source == shard_id for source, _ in self.splits.values()):
            raise ValueError(f"shard {shard_id} is being split already")
        mine = [u for u, s in enumerate(self.mapping) if s == shard_id]
        if len(mine) < 2:
            raise ValueError(f"shard {shard_id} has {len(mine)} μshard(s): nothing to split")
        now = self._clock()
        live = [r for r in self.order if self.alive(r, now) and r not in self.draining]
        if len(live) < REPLICATION_FACTOR:
            raise ValueError(f"{len(live)} live replicas for {REPLICATION_FACTOR} copies")
        copies = Counter(r for s in self.shards for r in s.replicas)
        leads = Counter(s.primary for s in self.shards)
        voters = sorted(live, key=lambda r: (copies[r], leads[r]))[:REPLICATION_FACTOR]
        new = ShardAssignment(len(self.shards), replicas=voters)
        self.shards.append(new)
        self.splits[new.id] = (shard_id, mine[1::2])
        log.info("splitting", extra={"shard": shard_id, "new": new.id, "voters": voters})
        self.save()
        return pb.Split(shard=shard_id, new_shard=new.id, remaining=mine[1::2])

    def next_split_move(self) -> tuple[int, int] | None:
        """The next μshard a split moves (and to where), once its new shard has a primary;
        a finished split is forgotten."""
        for new, (_, remaining) in list(self.splits.items()):
            remaining[:] = [u for u in remaining if self.mapping[u] != new]  # (there already)
            if not remaining:
                del self.splits[new]
                self.save()
                continue
            shard = self.shards[new]
            if shard.primary and self.alive(shard.primary):
                return remaining[0], new
        return None

    def split_moved(self, microshard: int, new_shard: int) -> None:
        """A split's μshard is in its new shard."""
        split = self.splits.get(new_shard)
        if split is not None and microshard in split[1]:
            split[1].remove(microshard)
