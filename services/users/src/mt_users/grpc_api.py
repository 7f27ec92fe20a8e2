"""Thin gRPC adapter of the users service: requests in, domain calls, messages out."""

from __future__ import annotations

from typing import Any

from mt_proto import users_pb2 as pb
from mt_proto import users_pb2_grpc

from mt_users.domain import Users


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    def __init__(self, users: Users) -> None:
        self.users = users

    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: Any
    ) -> pb.CreateAccountResponse:
        user, token = await self.users.create_account(
            request.handle if request.HasField("handle") else None,
            request.password,
            request.display_name if request.HasField("display_name") else None,
            request.legacy_id if request.HasField("legacy_id") else None,
            request.legacy_assertion if request.HasField("legacy_assertion") else None,
        )
        return pb.CreateAccountResponse(user=user, token=token)

    async def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        if request.HasField("legacy_assertion"):
            user, token = await self.users.login_with_assertion(request.legacy_assertion)
        else:
            user, token = await self.users.login(request.handle, request.password)
        return pb.LoginResponse(user=user, token=token)

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: Any
    ) -> pb.AuthenticateResponse:
        return pb.AuthenticateResponse(user_id=await self.users.authenticate(request.token))

    async def RevokeSession(
        self, request: pb.RevokeSessionRequest, context: Any
    ) -> pb.RevokeSessionResponse:
        return pb.RevokeSessionResponse(revoked=await self.users.revoke(request.token))

    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> pb.User:
        return await self.users.get_user(request.user_id)

    async def GetUserByHandle(self, request: pb.GetUserByHandleRequest, context: Any) -> pb.User:
        return await self.users.get_by_handle(request.handle)

    async def GetUserByLegacyId(
        self, request: pb.GetUserByLegacyIdRequest, context: Any
    ) -> pb.User:
        return await self.users.get_by_legacy_id(request.legacy_id)

    async def BatchGetUsersByLegacyId(
        self, request: pb.BatchGetUsersByLegacyIdRequest, context: Any
    ) -> pb.BatchGetUsersByLegacyIdResponse:
        users = await self.users.batch_get_by_legacy(request.legacy_ids)
        return pb.BatchGetUsersByLegacyIdResponse(users=users)

    async def BatchGetUsers(
        self, request: pb.BatchGetUsersRequest, context: Any
    ) -> pb.BatchGetUsersResponse:
        return pb.BatchGetUsersResponse(users=await self.users.batch_get(request.user_ids))

    async def UpdateProfile(self, request: pb.UpdateProfileRequest, context: Any) -> pb.User:
        return await self.users.update_profile(
            request.user_id,
            request.display_name if request.HasField("display_name") else None,
            request.bio if request.HasField("bio") else None,
        )

    async def SearchUsers(
        self, request: pb.SearchUsersRequest, context: Any
    ) -> pb.SearchUsersResponse:
        items, cursor = await self.users.search(
            request.prefix, request.page.limit, request.page.cursor
        )
        return pb.SearchUsersResponse(items=items, next_cursor=cursor)
