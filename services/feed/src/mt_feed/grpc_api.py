"""Thin gRPC adapter of the feed service."""

from __future__ import annotations

from typing import Any

from mt_proto import feed_pb2 as pb
from mt_proto import feed_pb2_grpc

from mt_feed.domain import Feed


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    async def GetFeed(self, request: pb.GetFeedRequest, context: Any) -> pb.GetFeedResponse:
        items, cursor = await self.feed.get_feed(
            request.viewer_id, request.page.limit, request.page.cursor
        )
        return pb.GetFeedResponse(items=items, next_cursor=cursor)

    async def GetInboxStats(self, request: pb.GetInboxStatsRequest, context: Any) -> pb.InboxStats:
        return await self.feed.inbox_stats(request.user_id)

    async def RebuildInbox(
        self, request: pb.RebuildInboxRequest, context: Any
    ) -> pb.RebuildInboxResponse:
        return pb.RebuildInboxResponse(size=await self.feed.rebuild(request.user_id))

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Any
    ) -> pb.ListNotificationsResponse:
        items, actors, cursor = await self.feed.notifications(
            request.user_id, request.page.limit, request.page.cursor
        )
        return pb.ListNotificationsResponse(items=items, actors=actors, next_cursor=cursor)
