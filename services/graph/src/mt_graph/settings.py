"""Settings of the graph service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "graph"
    trace_roots: bool = False  # traces start at the edge (the gateway); we continue them
    grpc_port: int = 50052
    # The legacy identity provider's secret is secrets/legacy-idp.key under MT_HOME (made on
    # first use): the operator's, which the load generator and tests read too.
    home: str = ".local"
    legacy_seed: int = 2023
    legacy_size: int = 1_000_000
    import_batch_size: int = 100  # legacy followees resolved and followed per step
