"""Thin gRPC adapter of the posts service."""

from __future__ import annotations

from typing import Any

from mt_proto import posts_pb2 as pb
from mt_proto import posts_pb2_grpc

from mt_posts.domain import Posts


class PostsServicer(posts_pb2_grpc.PostsServiceServicer):
    def __init__(self, posts: Posts) -> None:
        self.posts = posts

    async def CreatePost(self, request: pb.CreatePostRequest, context: Any) -> pb.Post:
        return await self.posts.create(
            request.author_id,
            request.text,
            request.reply_to if request.HasField("reply_to") else None,
            request.idempotency_key if request.HasField("idempotency_key") else None,
        )

    async def GetPost(self, request: pb.GetPostRequest, context: Any) -> pb.Post:
        return await self.posts.get(request.post_id, request.viewer_id)

    async def BatchGetPosts(
        self, request: pb.BatchGetPostsRequest, context: Any
    ) -> pb.BatchGetPostsResponse:
        found = await self.posts.batch_get(request.post_ids, request.viewer_id)
        return pb.BatchGetPostsResponse(posts=found)

    async def DeletePost(
        self, request: pb.DeletePostRequest, context: Any
    ) -> pb.DeletePostResponse:
        await self.posts.delete(request.post_id, request.actor_id)
        return pb.DeletePostResponse()

    async def ListUserPosts(
        self, request: pb.ListUserPostsRequest, context: Any
    ) -> pb.ListUserPostsResponse:
        items, cursor = await self.posts.user_posts(
            request.author_id,
            request.page.limit,
            request.page.cursor,
            request.before_id,
            request.viewer_id,
        )
        return pb.ListUserPostsResponse(items=items, next_cursor=cursor)

    async def ListReplies(
        self, request: pb.ListRepliesRequest, context: Any
    ) -> pb.ListRepliesResponse:
        items, cursor = await self.posts.replies(
            request.post_id, request.page.limit, request.page.cursor, request.viewer_id
        )
        return pb.ListRepliesResponse(items=items, next_cursor=cursor)

    async def Like(self, request: pb.LikeRequest, context: Any) -> pb.LikeResponse:
        return pb.LikeResponse(changed=await self.posts.like(request.user_id, request.post_id))

    async def Unlike(self, request: pb.UnlikeRequest, context: Any) -> pb.UnlikeResponse:
        return pb.UnlikeResponse(changed=await self.posts.unlike(request.user_id, request.post_id))
