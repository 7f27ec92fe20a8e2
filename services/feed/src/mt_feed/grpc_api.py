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
        items, cursor = await self.feed.notifications(
            request.user_id, request.page.limit, request.page.cursor
        )
        return pb.ListNotificationsResponse(items=items, next_cursor=cursor)

    async def AddNotifications(
        self, request: pb.AddNotificationsRequest, context: Any
    ) -> pb.AddNotificationsResponse:
        await self.feed.add_notifications(list(request.deliveries))
        return pb.AddNotificationsResponse()

    async def Deliver(self, request: pb.DeliverRequest, context: Any) -> pb.DeliverResponse:
        await self.feed.deliver(request.item, list(request.user_ids))
        return pb.DeliverResponse()

    async def Retract(self, request: pb.RetractRequest, context: Any) -> pb.RetractResponse:
        await self.feed.retract(request.post_id, list(request.user_ids))
        return pb.RetractResponse()

    async def Backfill(self, request: pb.BackfillRequest, context: Any) -> pb.BackfillResponse:
        return pb.BackfillResponse(
            added=await self.feed.backfill(request.user_id, request.author_id)
        )

    async def RemoveAuthor(
        self, request: pb.RemoveAuthorRequest, context: Any
    ) -> pb.RemoveAuthorResponse:
        removed = await self.feed.remove_author(request.user_id, request.author_id)
        return pb.RemoveAuthorResponse(removed=removed)

    async def FilterActive(
        self, request: pb.FilterActiveRequest, context: Any
    ) -> pb.FilterActiveResponse:
        return pb.FilterActiveResponse(
            user_ids=await self.feed.filter_active(list(request.user_ids))
        )
