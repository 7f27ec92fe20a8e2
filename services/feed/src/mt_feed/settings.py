"""Settings of the feed service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "feed"
    trace_roots: bool = False  # traces start at the edge (the gateway); we continue them
    grpc_port: int = 50055
    timeline_concurrency: int = 32  # author timelines read at once (rebuilds, celebrity merge)
    inbox_capacity: int = 800  # like Twitter's and Mastodon's home timelines
    # Authors with more followers than this are not fanned out; their posts are merged at read.
    celebrity_followers: int = 5_000
    active_window_s: int = 7 * 24 * 3600  # a user who read within this gets fan-out writes
    backfill_posts: int = 20  # recent posts of a newly followed author put into the inbox
    celebrities_refresh_s: int = 300  # how often a reader's list of celebrity followees is redone
