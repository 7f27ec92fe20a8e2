"""``minithreads client`` against an in-process fake of the REST contract: profiles and their
private session files, human and JSON output, and errors as one line without a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mt_cli import clientcmd
from mt_cli.main import parser

from tests.conftest import CLI, minithreads
from tests.unit.fakeapi import FakeApi

PASSWORD = "correct horse"
POST_LINE = re.compile(r"^@(\S+) · \d{4}-\d\d-\d\d \d\d:\d\dZ · (.+)  \[(\d+), (.+)\]$")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi.running() as fake:
        yield fake


@pytest.fixture
def home(tmp_path: Path, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$MT_HOME for the CLI, pointed at the fake; the password comes from the environment."""
    monkeypatch.setenv("MT_HOME", str(tmp_path))
    monkeypatch.setenv("MT_API_URL", api.url)
    monkeypatch.setenv("MT_PASSWORD", PASSWORD)
    return tmp_path


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``minithreads client ARGV...`` parsed by the real parser and run in this process."""

    def run(*argv: str) -> Result:
        code = clientcmd.run(parser().parse_args(["client", *argv]), home)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_cli__two_profiles_post_follow_and_read_the_feed(cli: Cli) -> None:
    signed_up = cli("signup", "ada", "--display-name", "Ada")
    assert signed_up.out == "signed up as @ada (profile 'default')\n"
    assert cli("--as", "bob", "signup", "bob").code == 0
    assert cli("follow", "ada", "--as", "bob").out == "following @ada\n"
    posted = cli("post", "hello\nworld")
    feed = cli("--as", "bob", "feed")
    assert feed.out == posted.out
    match = POST_LINE.match(feed.out.rstrip("\n"))
    assert match is not None, feed.out
    assert match.group(1, 2, 4) == ("ada", "hello world", "0 likes, 0 replies")


def test_cli__session_file_is_private_to_its_owner(cli: Cli, home: Path, api: FakeApi) -> None:
    cli("--as", "ada", "signup", "ada")
    path = home / "client" / "ada.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert (saved["handle"], saved["url"]) == ("ada", api.url)
    assert saved["token"] in api.tokens


def test_cli__logout_forgets_the_session(cli: Cli, home: Path) -> None:
    cli("signup", "ada")
    assert cli("logout").out == "logged out @ada (profile 'default')\n"
    assert not (home / "client" / "default.json").exists()
    result = cli("me")
    assert result.code == 1
    assert result.err.startswith("error: not_logged_in: profile 'default' has no session")


def test_cli__login_uses_the_url_it_was_given(
    cli: Cli, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("signup", "ada")
    monkeypatch.delenv("MT_API_URL")
    assert cli("--url", api.url, "login", "ada").code == 0
    assert "@ada" in cli("me").out  # the profile remembers where it logged in


def test_cli__error_prints_code_without_traceback(home: Path, api: FakeApi) -> None:
    result = minithreads("client", "--url", api.url, "user", "nobody", timeout_s=60)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: not_found: no user @nobody\n"


def test_cli__conflict_and_bad_input_are_one_line_errors(cli: Cli) -> None:
    cli("signup", "ada")
    taken = cli("--as", "other", "signup", "ada")
    assert (taken.code, taken.err) == (1, "error: handle_taken: @ada is taken\n")
    bad_url = cli("--url", "localhost:8080", "user", "ada")
    assert bad_url.err == "error: bad_url: not an http(s) URL: 'localhost:8080'\n"
    bad_name = cli("--as", "../elsewhere", "me")
    assert bad_name.err.startswith("error: bad_profile_name:")


def test_cli__unreachable_server_is_an_error_line(cli: Cli) -> None:
    result = cli("--url", "http://127.0.0.1:9", "user", "ada")
    assert result.code == 1
    assert result.err.startswith("error: unreachable: cannot connect to http://127.0.0.1:9")


def test_cli__json_output_is_machine_readable(cli: Cli) -> None:
    user = json.loads(cli("signup", "ada", "--json").out)
    assert (user["handle"], user["followers_count"]) == ("ada", 0)
    assert "token" not in user
    post = json.loads(cli("--json", "post", "hi").out)
    assert (post["author"]["handle"], post["created_at"][-1]) == ("ada", "Z")
    page = json.loads(cli("feed", "--json").out)
    assert [item["id"] for item in page["items"]] == [post["id"]]
    assert page["next_cursor"] is None
    assert json.loads(cli("like", post["id"], "--json").out) == {"ok": True}


def test_cli__lists_page_with_a_cursor(cli: Cli) -> None:
    cli("signup", "ada")
    for n in range(3):
        cli("post", f"post {n}")
    first = cli("posts", "ada", "--limit", "2").out.splitlines()
    assert [POST_LINE.match(line) is not None for line in first] == [True, True, False]
    assert first[2] == "(more: --cursor 2)"
    rest = cli("posts", "ada", "--limit", "2", "--cursor", "2").out.splitlines()
    assert len(rest) == 1
    assert "post 0" in rest[0]
    assert cli("--as", "nobody", "search", "zzz").out == "(nothing here)\n"


def test_cli__likes_notifications_search_and_profiles(cli: Cli) -> None:
    cli("signup", "ada")
    cli("--as", "bob", "signup", "bob", "--display-name", "Bob")
    post_id = json.loads(cli("post", "like me", "--json").out)["id"]
    assert cli("--as", "bob", "like", post_id).out == f"liked {post_id}\n"
    assert cli("--as", "bob", "follow", "ada").code == 0
    notes = cli("notifications").out.splitlines()
    assert [line.split(" · ", 1)[1] for line in notes] == [
        "@bob followed you",
        f"@bob liked your post (post {post_id})",
    ]
    assert "[" + post_id + ", 1 like, 0 replies]" in cli("posts", "ada").out
    assert cli("search", "b").out == "@bob (Bob) · 0 followers · 1 following · 0 posts\n"
    assert cli("user", "ada").out.startswith("@ada · 1 follower · 0 following · 1 post · joined ")


def test_cli__password_comes_from_a_prompt_when_not_given(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MT_PASSWORD")
    answers = iter(["first password", "second password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    result = cli("signup", "ada")
    assert result.err == "error: password_mismatch: the two passwords differ\n"
    answers = iter([PASSWORD, PASSWORD, PASSWORD])
    assert cli("signup", "ada").code == 0
    assert cli("login", "ada").code == 0
    assert cli("login", "ada", "--password", "wrong password").err.startswith(
        "error: bad_credentials:"
    )


def test_cli__import_polls_until_done(cli: Cli) -> None:
    cli("signup", "--legacy-id", "4", "--legacy-credential", "cred-4")
    lines = cli("import", "--interval-s", "0").out.splitlines()
    assert re.fullmatch(r"import (\d+) started; Ctrl-C stops waiting, not the import", lines[0])
    assert "running" in lines[1]
    assert lines[-1].endswith(": done, 5 of 5 followees done, 5 pending (not on the app yet)")
    import_id = lines[0].split()[1]
    again = cli("import", "--id", import_id, "--json").out.splitlines()
    assert [json.loads(line)["state"] for line in again] == ["done"]


def test_cli__ctrl_c_stops_waiting_for_an_import(home: Path) -> None:
    subprocess.run(
        [CLI, "client", "signup", "--legacy-id", "5", "--legacy-credential", "cred-5"],
        check=True,
        capture_output=True,
    )
    with subprocess.Popen(
        [CLI, "client", "import", "--interval-s", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("import ")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "stopped waiting" in err
    assert "Traceback" not in err
