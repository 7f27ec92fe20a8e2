"""Settings of the async workers, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "workers"
    trace_roots: bool = False  # traces start at the edge (the gateway); we continue them
    grpc_port: int = 50056  # health only
    # Which job kinds this process consumes (scale a kind by running more processes with it).
    worker_kinds: str = "fanout,follow,notify,import,join"
    followers_page: int = 1_000  # followers fanned out per inbox write
    join_batch: int = 1_000  # the most pending follows one join step applies
    max_concurrency: int = 16  # per kind; the AIMD limiter moves below it

    def kinds(self) -> list[str]:
        return [k.strip() for k in self.worker_kinds.split(",") if k.strip()]
