"""``minithreads client``: use the REST API as a person would, from a terminal.

  minithreads client signup HANDLE [--password P] [--display-name N]
  minithreads client signup [HANDLE] --legacy-id ID [--legacy-credential C] [--password P]
  minithreads client login HANDLE [--password P]
  minithreads client login --legacy-id ID [--legacy-credential C]
  minithreads client logout | me
  minithreads client post TEXT [--reply-to ID]
  minithreads client feed | notifications [--limit N] [--cursor C]
  minithreads client posts HANDLE | search PREFIX [--limit N] [--cursor C]
  minithreads client follow HANDLE | unfollow HANDLE | user HANDLE
  minithreads client like POST_ID | unlike POST_ID
  minithreads client import [--id ID]      start (or resume watching) the legacy graph import

Options of every verb: ``--as NAME`` picks a profile (default "default"), so two users can be
driven from one terminal; ``--url`` the server (default $MT_API_URL, else the URL the profile
logged in to, else http://127.0.0.1:8080); ``--json`` prints machine-readable output.
A profile's session lives in ``$MT_HOME/client/NAME.json`` (mode 0600). A password comes from
``--password``, else $MT_PASSWORD, else a prompt. A legacy account is proven with its
credential at the legacy identity provider (``--legacy-credential``, else
$MT_LEGACY_CREDENTIAL, else a prompt; an operator prints a synthetic account's with
``minithreads legacy credential ID``): its assertion links the account at signup (no password
needed) or logs it in.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mt_client import ApiError, Client, Import, Notification, Page, Post, Session, User

T = TypeVar("T")
Verb = Callable[[Client, argparse.Namespace, "Profile"], Awaitable[int]]

DEFAULT_URL = "http://127.0.0.1:8080"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class CliError(Exception):
    """A failure on this side of the API, reported like the API's own errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# -- profiles: one stored session per name ------------------------------------------------


@dataclasses.dataclass
class Profile:
    """A named, stored session: the token, whose it is, and the server that issued it."""

    name: str
    path: Path
    url: str | None = None
    token: str | None = None
    handle: str | None = None

    @classmethod
    def load(cls, home: Path, name: str) -> Profile:
        if not _PROFILE_NAME.match(name):
            raise CliError("bad_profile_name", f"{name!r}: use letters, digits, '_', '.', '-'")
        path = home / "client" / f"{name}.json"
        if not path.exists():
            return cls(name, path)
        try:
            saved = json.loads(path.read_text())
            return cls(name, path, saved.get("url"), saved.get("token"), saved.get("handle"))
        except (ValueError, AttributeError):
            raise CliError("bad_profile", f"{path} is not a saved session; delete it") from None

    def remember(self, url: str, session: Session) -> None:
        self.url, self.token, self.handle = url, session.token, session.user.handle
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written to a private temporary file, then renamed: the token is never readable by
        # others, not even for a moment, and a crash leaves the old session intact.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file left by a crash
        with os.fdopen(fd, "w") as out:
            json.dump({"url": self.url, "token": self.token, "handle": self.handle}, out)
        os.replace(tmp, self.path)

    def forget(self) -> None:
        self.token = None
        self.path.unlink(missing_ok=True)


# -- arguments ------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--as, --url and --json, accepted before the verb (defaults) and after it (SUPPRESS:
    a verb's parser sets them only when given, so it never overwrites the group's value)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--as",
        dest="profile",
        metavar="NAME",
        default=default("default"),
        help='the profile (stored session) to use; default: "default"',
    )
    parser.add_argument(
        "--url",
        default=default(None),
        help=f"the REST API; default: $MT_API_URL, else the profile's, else {DEFAULT_URL}",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def add_arguments(client: argparse.ArgumentParser) -> None:
    client.description = (__doc__ or "").replace("``", "")
    client.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the usage lines
    _add_common(client, defaults=True)
    sub = client.add_subparsers(dest="client_command", required=True, metavar="VERB")

    def verb(name: str, handler: Verb, text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text)
        _add_common(parser, defaults=False)
        parser.set_defaults(client_run=handler)
        return parser

    signup = verb("signup", _signup, "create an account and log this profile in")
    signup.add_argument("handle", nargs="?", help="optional with --legacy-id")
    signup.add_argument("--password", help="optional with --legacy-id")
    signup.add_argument("--display-name")
    signup.add_argument("--legacy-id", help="link the legacy account with this id")
    signup.add_argument("--legacy-credential", help="its credential at the legacy provider")
    login = verb("login", _login, "log this profile in")
    login.add_argument("handle", nargs="?", help="or --legacy-id")
    login.add_argument("--password")
    login.add_argument("--legacy-id", help="log in as the account linked to it")
    login.add_argument("--legacy-credential", help="its credential at the legacy provider")
    verb("logout", _logout, "end this profile's session")
    verb("me", _me, "this profile's user")
    post = verb("post", _post, "publish a post")
    post.add_argument("text")
    post.add_argument("--reply-to", metavar="POST_ID")
    verb("follow", _follow, "follow a user").add_argument("handle")
    verb("unfollow", _unfollow, "stop following a user").add_argument("handle")
    verb("user", _user, "a user's profile").add_argument("handle")
    verb("like", _like, "like a post").add_argument("post_id")
    verb("unlike", _unlike, "take a like back").add_argument("post_id")
    lists: list[tuple[str, Verb, str, str | None]] = [
        ("feed", _feed, "own and followed authors' posts, newest first", None),
        ("notifications", _notifications, "follows, likes and replies, newest first", None),
        ("posts", _posts, "a user's posts, newest first", "handle"),
        ("search", _search, "users whose handle starts with PREFIX", "prefix"),
    ]
    for name, handler, text, positional in lists:
        parser = verb(name, handler, text)
        if positional:
            parser.add_argument(positional)
        parser.add_argument("--limit", type=int, default=20, help="1..100 (default 20)")
        parser.add_argument("--cursor", help="the page after the one that printed it")
    imp = verb("import", _import, "copy the legacy follow graph; wait and show progress")
    imp.add_argument("--id", dest="import_id", help="watch this import instead of starting one")
    imp.add_argument("--interval-s", type=float, default=1.0, help="poll interval")


# -- running ------------------------------------------------------------------------------------

_NEEDS_SESSION = frozenset(
    {
        "logout",
        "me",
        "post",
        "feed",
        "follow",
        "unfollow",
        "like",
        "unlike",
        "notifications",
        "import",
    }
)


def run(args: argparse.Namespace, home: Path) -> int:
    try:
        profile = Profile.load(home, args.profile)
        if args.client_command in ("signup", "login") and not args.legacy_id:
            args.password = _password(args.password, confirm=args.client_command == "signup")
        if args.client_command in _NEEDS_SESSION and not profile.token:
            raise CliError(
                "not_logged_in",
                f"profile {profile.name!r} has no session; "
                f"run `minithreads client --as {profile.name} login HANDLE`",
            )
        return asyncio.run(_until_interrupted(_run(_client(args, profile), args, profile)))
    except (ApiError, CliError) as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except OSError as err:  # the profile file could not be read or written
        print(f"error: local_io: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nminithreads client: stopped waiting; what the server already accepted goes on",
            file=sys.stderr,
        )
        return 130


async def _until_interrupted(work: Awaitable[int]) -> int:
    """``work``'s result, or KeyboardInterrupt at Ctrl-C even if a library in the middle of a
    request swallows the cancellation that asyncio's own handler would send (seen in CI)."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if task.done():
        stop.cancel()
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)  # its cleanup; not waiting for one that went on
    raise KeyboardInterrupt


def _client(args: argparse.Namespace, profile: Profile) -> Client:
    url = args.url or os.environ.get("MT_API_URL") or profile.url or DEFAULT_URL
    try:
        return Client(url, profile.token)
    except ValueError as err:
        raise CliError("bad_url", str(err)) from None


async def _run(client: Client, args: argparse.Namespace, profile: Profile) -> int:
    verb: Verb = args.client_run
    async with client:
        return await verb(client, args, profile)


def _password(given: str | None, *, confirm: bool) -> str:
    if given or (given := os.environ.get("MT_PASSWORD")):
        return given
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("password (again): ") != password:
        raise CliError("password_mismatch", "the two passwords differ")
    return password


# -- the verbs ------------------------------------------------------------------------------------


def _legacy_credential(given: str | None) -> str:
    if given or (given := os.environ.get("MT_LEGACY_CREDENTIAL")):
        return given
    return getpass.getpass("legacy credential: ")


async def _signup(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    if not args.handle and not args.legacy_id:
        raise CliError("invalid_argument", "give a HANDLE, or --legacy-id to use its handle")
    assertion = None
    if args.legacy_id:
        credential = _legacy_credential(args.legacy_credential)
        assertion = await c.legacy_assertion(args.legacy_id, credential)
    session = await c.signup(
        args.handle,
        password=args.password,
        display_name=args.display_name,
        legacy_assertion=assertion,
    )
    profile.remember(c.base_url, session)
    return _show(args, session.user, f"signed up as @{session.user.handle} ({_as(profile)})")


async def _login(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    if args.legacy_id:
        credential = _legacy_credential(args.legacy_credential)
        assertion = await c.legacy_assertion(args.legacy_id, credential)
        session = await c.login(legacy_assertion=assertion)
    elif args.handle:
        session = await c.login(args.handle, args.password)
    else:
        raise CliError("invalid_argument", "give a HANDLE, or --legacy-id")
    profile.remember(c.base_url, session)
    return _show(args, session.user, f"logged in as @{session.user.handle} ({_as(profile)})")


async def _logout(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    await c.logout()
    handle = profile.handle
    profile.forget()
    return _show(args, {"ok": True}, f"logged out @{handle} ({_as(profile)})")


async def _me(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    user = await c.me()
    return _show(args, user, user_card(user))


async def _user(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    user = await c.user(args.handle)
    return _show(args, user, user_card(user))


async def _post(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    post = await c.post(args.text, reply_to=args.reply_to)
    return _show(args, post, post_line(post))


async def _follow(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    await c.follow(args.handle)
    return _show(args, {"ok": True}, f"following @{args.handle}")


async def _unfollow(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    await c.unfollow(args.handle)
    return _show(args, {"ok": True}, f"no longer following @{args.handle}")


async def _like(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    await c.like(args.post_id)
    return _show(args, {"ok": True}, f"liked {args.post_id}")


async def _unlike(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    await c.unlike(args.post_id)
    return _show(args, {"ok": True}, f"unliked {args.post_id}")


async def _feed(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    return _show_page(args, await c.feed(limit=args.limit, cursor=args.cursor), post_line)


async def _posts(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    page = await c.user_posts(args.handle, limit=args.limit, cursor=args.cursor)
    return _show_page(args, page, post_line)


async def _notifications(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    page = await c.notifications(limit=args.limit, cursor=args.cursor)
    return _show_page(args, page, notification_line)


async def _search(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    page = await c.search_users(args.prefix, limit=args.limit, cursor=args.cursor)
    return _show_page(args, page, user_line)


async def _import(c: Client, args: argparse.Namespace, profile: Profile) -> int:
    if args.import_id is None:
        started = await c.start_import()
        import_id = started.id
        if not args.json:
            print(f"import {import_id} started; Ctrl-C stops waiting, not the import", flush=True)
    else:
        import_id = args.import_id
    last: Import | None = None
    async for job in c.watch_import(import_id, interval_s=args.interval_s):
        if job != last:  # print changes only, not every poll
            _show(args, job, import_line(job))
        last = job
    if last is not None and last.state == "failed":
        raise CliError("import_failed", f"import {import_id} failed after {last.done} followees")
    return 0


# -- output ---------------------------------------------------------------------------------------


def _show(args: argparse.Namespace, value: object, human: str) -> int:
    print(to_json(value) if args.json else human, flush=True)
    return 0


def _show_page(args: argparse.Namespace, page: Page[T], line: Callable[[T], str]) -> int:
    if args.json:
        return _show(args, page, "")
    for item in page.items:
        print(line(item))
    if not page.items:
        print("(nothing here)")
    if page.next_cursor:
        print(f"(more: --cursor {page.next_cursor})")
    return 0


def to_json(value: object) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)  # nested records and tuples become plain JSON
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def post_line(post: Post) -> str:
    """``@handle · time · text  [id, likes, replies]``, on one line whatever the text."""
    text = " ".join(post.text.split())
    facts = [post.id, _count(post.like_count, "like"), _count(post.reply_count, "reply")]
    if post.reply_to:
        facts.append(f"reply to {post.reply_to}")
    if post.liked_by_me:
        facts.append("liked")
    return f"@{post.author.handle} · {when(post.created_at)} · {text}  [{', '.join(facts)}]"


def user_line(user: User) -> str:
    name = f" ({user.display_name})" if user.display_name else ""
    counts = f"{_count(user.followers_count, 'follower')} · {user.following_count} following"
    return f"@{user.handle}{name} · {counts} · {_count(user.posts_count, 'post')}"


def user_card(user: User) -> str:
    card = f"{user_line(user)} · joined {when(user.created_at)}"
    return f"{card}\n  {user.bio}" if user.bio else card


def notification_line(note: Notification) -> str:
    action = {"follow": "followed you", "like": "liked your post", "reply": "replied to you"}
    what = action.get(note.type, note.type)
    post = f" (post {note.post_id})" if note.post_id else ""
    return f"{when(note.created_at)} · @{note.actor.handle} {what}{post}"


def import_line(job: Import) -> str:
    pending = f", {job.pending} pending (not on the app yet)" if job.pending else ""
    return f"import {job.id}: {job.state}, {job.done} of {job.total} followees done{pending}"


def _count(n: int, noun: str) -> str:
    plural = "replies" if noun == "reply" else f"{noun}s"
    return f"{n} {noun if n == 1 else plural}"


def _as(profile: Profile) -> str:
    return f"profile {profile.name!r}"
