"""pytest support for the end-to-end tests in tests/integration (real Slurm + jobbergate-api).

The stack is brought up outside pytest: ``bash tests/integration/stack.sh up``. Tests that use
the ``stack`` fixture (directly or through the others) FAIL, not skip, when it is not up.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import helpers  # noqa: E402
from helpers import AgentClient, IssuerControl, SlurmControl, Stack, StackNotUp, UserClient  # noqa: E402
from tool import Tool  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # setup.cfg declares the marker; this only keeps --strict-markers happy without it
    if not any(line.split(":")[0].strip() == "integration" for line in config.getini("markers")):
        config.addinivalue_line("markers", "integration: end-to-end tests against the real stack")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


# The stack's job users (stack.sh's UNIX_USERS); their homes are the host's, bind-mounted into every leg.
JOB_USERS = ("alice", "bob")


@pytest.fixture(scope="session", autouse=True)
def fresh_job_homes() -> None:
    """Each session starts with the job users' homes as useradd made them: a file an earlier run left
    there (or an older checkout wrote without the tool's manifest) is one the tool rightly refuses to
    replace, which would reject the submissions that write it."""
    skeleton = set(os.listdir("/etc/skel")) if os.path.isdir("/etc/skel") else set()
    for user in JOB_USERS:
        home = Path("/home", user)
        if not home.is_dir():
            continue
        for entry in home.iterdir():
            if entry.name in skeleton:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The running stack (from stack.env); fails the test when the stack is not up."""
    try:
        return helpers.get_stack(reload=True).check()
    except StackNotUp as exc:
        pytest.fail(str(exc), pytrace=False)
    except KeyError as exc:
        pytest.fail(f"{helpers.NOT_UP} (stack.env lacks {exc})", pytrace=False)


@pytest.fixture
def issuer(stack: Stack):
    """IssuerControl; stats, TTL and faults are reset before and after the test."""
    control = IssuerControl(stack)
    control.reset()
    yield control
    control.reset()


@pytest.fixture(scope="session")
def alice(stack: Stack) -> UserClient:
    return UserClient(stack, "alice")


@pytest.fixture(scope="session")
def bob(stack: Stack) -> UserClient:
    return UserClient(stack, "bob")


@pytest.fixture(scope="session")
def admin(stack: Stack) -> UserClient:
    return UserClient(stack, "admin")


class Users(dict):
    """username -> UserClient for every OIDC user of the realm (alice, bob, root-user, ghost, admin)."""

    def __init__(self, stack: Stack):
        super().__init__()
        self.stack = stack

    def __missing__(self, username: str) -> UserClient:
        client = self[username] = UserClient(self.stack, username)
        return client


@pytest.fixture(scope="session")
def users(stack: Stack) -> Users:
    return Users(stack)


@pytest.fixture(scope="session")
def slurm(stack: Stack) -> SlurmControl:
    """The default leg: slurm.slurm_job(id) / slurm_jobs() / slurm_jobs_with_comment(c) /
    slurmdb_job(id) / slurm_submit(...) / wait_for_state(id) / cli("squeue")"""
    return SlurmControl(stack)


@pytest.fixture(scope="session")
def slurm_on(stack: Stack) -> Callable[..., SlurmControl]:
    """slurm_on("2411") or slurm_on("2511", "v0.0.43"): SlurmControl for a leg (and API version)."""

    def make(leg: str | None = None, api_version: str | None = None) -> SlurmControl:
        return SlurmControl(stack, leg, api_version)

    return make


@pytest.fixture
def agent(stack: Stack) -> AgentClient:
    """The local-slurm service account (API agent routes), e.g. ``agent.drain()`` for a clean slate."""
    return AgentClient(stack, stack.client_id)


class Services:
    """Stop/start services inside a test; whatever was stopped is started again at teardown."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.stopped: list[str] = []

    def stop(self, name: str) -> None:
        helpers.stop_service(name, self.stack)
        if name not in self.stopped:
            self.stopped.append(name)

    def start(self, name: str) -> None:
        helpers.start_service(name, self.stack)
        if name in self.stopped:
            self.stopped.remove(name)

    def restore(self) -> None:
        for name in reversed(self.stopped[:]):
            self.start(name)


@pytest.fixture
def services(stack: Stack):
    """``services.stop("slurmrestd")`` ... restarted automatically after the test."""
    control = Services(stack)
    yield control
    control.restore()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test run, handy as a job name or Slurm comment."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return helpers.unique(f"jgs-{base}")


# ---------------------------------------------------------------------- the tool under test

FIGURES = Counter()


class Figures:
    """Counts of what the reliability tests tried and found, summed over the session."""

    def record(self, name: str, amount: int = 1) -> None:
        FIGURES[name] += amount


@pytest.fixture(scope="session")
def figures(stack: helpers.Stack) -> Iterator[Figures]:
    yield Figures()
    path = stack.stack_dir / "reliability-figures.json"
    path.write_text(json.dumps(dict(sorted(FIGURES.items())), indent=2) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures")
        for name, count in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {count}")


@pytest.fixture
def make_tool(stack: helpers.Stack, tmp_path: Path) -> Callable[..., Tool]:
    """make_tool(name, cluster="local-slurm", leg=None, **overrides) -> a Tool with its own config
    and state, talking to that Slurm leg (default: the default leg).
    The first tool of each cluster in a test drains that cluster's leftover submissions, so
    every test starts from a clean slate."""
    tools: dict[str, Tool] = {}
    drained: set[str] = set()

    def make(name: str, cluster: str = stack.client_id, leg: str | None = None, **overrides: Any) -> Tool:
        if name not in tools:
            if cluster not in drained:
                helpers.AgentClient(stack, cluster).drain()
                drained.add(cluster)
            tools[name] = Tool(tmp_path / name, stack, cluster, leg=leg, **overrides)
        return tools[name]

    return make


@pytest.fixture
def tool(make_tool: Callable[..., Tool]) -> Tool:
    return make_tool("tool")
