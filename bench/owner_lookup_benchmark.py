#!/usr/bin/env python3
"""Prints what the owner check costs an active submission that the journal does not cover (submitted
by another agent, or created naming a job id): one GET /job-submissions/{id} with the agent's token,
against the integration stack's jobbergate-api. Submissions the tool submitted itself cost nothing
extra: their journal row says whose job it is. Figures, not asserts.

Needs the stack up (`bash tests/integration/stack.sh up`):

    .venv/bin/python bench/owner_lookup_benchmark.py [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import helpers  # noqa: E402
from scenario import new_submission  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    arguments = parser.parse_args()
    stack = helpers.get_stack()
    cluster = "other-slurm"  # no test's pass takes it meanwhile
    submission = new_submission(helpers.UserClient(stack, "alice"), {"job.sh": b"#!/bin/bash\ntrue\n"},
                                client_id=cluster)
    agent = helpers.AgentClient(stack, cluster)
    agent.call("GET", f"/job-submissions/{submission['id']}")  # the token fetched, the connection open
    seconds = []
    for _ in range(arguments.requests):
        started = time.perf_counter()
        body = agent.call("GET", f"/job-submissions/{submission['id']}")
        seconds.append(time.perf_counter() - started)
        assert body["owner_email"] == "alice@example.com"
    agent.drain("owner lookup benchmark cleanup")
    milliseconds = sorted(1000 * value for value in seconds)
    print(f"GET /job-submissions/{{id}} as the agent, {len(milliseconds)} requests: "
          f"median {statistics.median(milliseconds):.1f} ms, p90 {milliseconds[int(0.9 * len(milliseconds))]:.1f} ms, "
          f"max {milliseconds[-1]:.1f} ms")


if __name__ == "__main__":
    main()
