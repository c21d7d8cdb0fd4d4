"""`jobbergate-sync check` against the real stack: every line ok when all is well, the failing peer
named with its fix and the right exit code when not, and nothing changed."""

from __future__ import annotations

import pwd
import re
from typing import Any, Callable

from tool import Result, Tool

EX_UNAVAILABLE, EX_CONFIG = 69, 78


def lines_of(result: Result) -> dict[str, tuple[str, str]]:
    """{what: (status, detail)} of the check's stdout; every line must have the check's shape."""
    parsed = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(ok  |FAIL|skip) ([^:]+): (.*)", line)
        assert match, f"not a check line: {line!r}\n{result.stdout}"
        parsed[match.group(2)] = (match.group(1).strip(), match.group(3))
    return parsed


def test_healthy_stack_passes_every_check(make_tool: Callable[..., Tool]) -> None:
    tool = make_tool("tool")
    result = tool.check()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_of(result)
    assert list(lines) == ["configuration", "secret files", "OIDC token", "Jobbergate API", "slurmrestd", "slurmdbd",
                           "slurmrestd token for slurm", "head nodes", "state directory and lock"]
    assert all(status == "ok" for status, _ in lines.values()), result.stdout
    assert lines["head nodes"][1].startswith("one controller"), lines["head nodes"]
    assert "serves" in lines["slurmrestd"][1] and "v0.0.38" in lines["slurmrestd"][1]
    assert result.stderr == ""
    # nothing a pass keeps was written: no token cache, journal or remembered choice
    assert not tool.token_cache.exists() and not tool.journal.exists()
    assert not (tool.directory / "state" / "slurmrestd.json").exists()


def test_stopped_slurmrestd_fails_its_lines_with_69(make_tool: Callable[..., Tool], services: Any) -> None:
    tool = make_tool("tool")
    services.stop("slurmrestd")
    result = tool.check()
    assert result.returncode == EX_UNAVAILABLE, result.stdout + result.stderr
    lines = lines_of(result)
    status, detail = lines["slurmrestd"]
    assert status == "FAIL" and "check [slurmrestd] url" in detail
    assert lines["slurmdbd"][0] == lines["slurmrestd token for slurm"][0] == "skip"
    assert lines["OIDC token"][0] == lines["Jobbergate API"][0] == "ok"


def test_api_url_without_the_mount_exits_78_naming_it(make_tool: Callable[..., Tool], stack: Any) -> None:
    tool = make_tool("tool", jobbergate__api_url=stack.api_url.removesuffix("/jobbergate"))
    result = tool.check()
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    status, detail = lines_of(result)["Jobbergate API"]
    assert status == "FAIL" and "[jobbergate] api_url" in detail and "/jobbergate" in detail


def test_email_shows_alice_and_her_home(make_tool: Callable[..., Tool]) -> None:
    tool = make_tool("tool")
    result = tool.check("--email", "alice@example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_of(result)
    home = pwd.getpwnam("alice").pw_dir
    status, detail = lines["user mapping of alice@example.com"]
    assert status == "ok" and detail.startswith(f"user alice (uid {pwd.getpwnam('alice').pw_uid}), home {home}, ")
    assert f"execution directory {home}/jobbergate" in detail
    assert lines["slurmrestd token for alice"][0] == "ok"
