"""Thin gRPC adapter of the graph service."""

from __future__ import annotations

from typing import Any

from mt_proto import graph_pb2 as pb
from mt_proto import graph_pb2_grpc

from mt_graph.domain import Graph
from mt_graph.imports import Legacy


class GraphServicer(graph_pb2_grpc.GraphServiceServicer):
    def __init__(self, graph: Graph, legacy: Legacy) -> None:
        self.graph = graph
        self.legacy = legacy

    async def Follow(self, request: pb.FollowRequest, context: Any) -> pb.FollowResponse:
        return pb.FollowResponse(
            changed=await self.graph.follow(request.follower_id, request.followee_id)
        )

    async def Unfollow(self, request: pb.UnfollowRequest, context: Any) -> pb.UnfollowResponse:
        return pb.UnfollowResponse(
            changed=await self.graph.unfollow(request.follower_id, request.followee_id)
        )

    async def ListFollowers(
        self, request: pb.ListFollowersRequest, context: Any
    ) -> pb.ListFollowersResponse:
        items, users, cursor = await self.graph.followers(
            request.user_id, request.page.limit, request.page.cursor
        )
        return pb.ListFollowersResponse(items=items, users=users, next_cursor=cursor)

    async def ListFollowing(
        self, request: pb.ListFollowingRequest, context: Any
    ) -> pb.ListFollowingResponse:
        items, users, cursor = await self.graph.following(
            request.user_id, request.page.limit, request.page.cursor
        )
        return pb.ListFollowingResponse(items=items, users=users, next_cursor=cursor)

    async def IsFollowing(
        self, request: pb.IsFollowingRequest, context: Any
    ) -> pb.IsFollowingResponse:
        found = await self.graph.is_following(request.viewer_id, request.target_ids)
        return pb.IsFollowingResponse(following_ids=found)

    async def GetLegacyAccount(
        self, request: pb.GetLegacyAccountRequest, context: Any
    ) -> pb.LegacyAccount:
        return self.legacy.account(request.legacy_id)

    async def ListLegacyFollowing(
        self, request: pb.ListLegacyFollowingRequest, context: Any
    ) -> pb.ListLegacyFollowingResponse:
        items, cursor = self.legacy.following(
            request.legacy_id, request.page.limit, request.page.cursor
        )
        return pb.ListLegacyFollowingResponse(items=items, next_cursor=cursor)

    async def StartImport(self, request: pb.StartImportRequest, context: Any) -> pb.Import:
        return await self.legacy.start_import(request.user_id, request.legacy_id)

    async def GetImport(self, request: pb.GetImportRequest, context: Any) -> pb.Import:
        return await self.legacy.get_import(request.user_id, request.import_id)

    async def IssueLegacyAssertion(
        self, request: pb.IssueLegacyAssertionRequest, context: Any
    ) -> pb.LegacyAssertion:
        return self.legacy.assertion(request.legacy_id, request.credential, request.audience)
