"""Fixtures of the tool under test for the end-to-end suite: configured `jobbergate-sync`
instances (`tool`, `make_tool`) and the reliability figures the README quotes (`figures`).

conftest.py star-imports this module, so every public name here is a fixture or a hook."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import helpers
from tool import Tool

__all__ = ["figures", "make_tool", "tool", "pytest_terminal_summary"]

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
    """make_tool(name, cluster="local-slurm", **overrides) -> a Tool with its own config and state.
    The first tool of each cluster in a test drains that cluster's leftover submissions, so
    every test starts from a clean slate."""
    tools: dict[str, Tool] = {}
    drained: set[str] = set()

    def make(name: str, cluster: str = stack.client_id, **overrides: Any) -> Tool:
        if name not in tools:
            if cluster not in drained:
                helpers.AgentClient(stack, cluster).drain()
                drained.add(cluster)
            tools[name] = Tool(tmp_path / name, stack.api_url, stack.oidc_issuer, stack.slurmrestd_url,
                               stack.jwt_key, cluster=cluster, secret=stack.client_secrets[cluster], **overrides)
        return tools[name]

    return make


@pytest.fixture
def tool(make_tool: Callable[..., Tool]) -> Tool:
    return make_tool("tool")
