#!/usr/bin/env python3
"""Prints how long passes of the installed `jobbergate-sync` take against the real integration
stack (jobbergate-api 5.12, slurmrestd 22.05), as the backlog grows. Figures, not asserts.

Needs the stack up (`bash tests/integration/stack.sh up`) and the package installed in .venv:

    .venv/bin/python bench/real_stack_benchmark.py [--sizes 10,50]

Each size: N submissions of a one-second job are created through the API as alice, then one pass
submits them all (timed), and passes run until every one is DONE (each timed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import helpers  # noqa: E402
import provenance  # noqa: E402
from scenario import new_submission, status_of  # noqa: E402
from tool import Tool  # noqa: E402

JOB = {"job.sh": b"#!/bin/bash\n#SBATCH --time=5 --ntasks=1\nsleep 1\n", "input.txt": b"data\n"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,50", help="backlog sizes, comma-separated")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    provenance.print_header()
    stack = helpers.get_stack().check()
    alice = helpers.UserClient(stack, "alice")
    print(f"{'pending':>8} {'submit pass s':>14} {'ms/submission':>14} {'passes to DONE':>15} {'update pass s (mean)':>21}")
    for size in sizes:
        helpers.AgentClient(stack, stack.client_id).drain()
        with tempfile.TemporaryDirectory() as directory:
            tool = Tool(Path(directory) / "tool", stack, stack.client_id, submit__execution_directory="/home/{username}/jgs-bench",
                        run__deadline=300)
            submissions = [new_submission(alice, JOB) for _ in range(size)]
            first = tool.run(timeout=600)
            if first.returncode != 0:
                print(first.stderr[-2000:], file=sys.stderr)
                return 1
            update_seconds = []
            while not all(status_of(alice, sub) == "DONE" for sub in submissions):
                time.sleep(2)
                update_seconds.append(tool.run(timeout=600).seconds)
            mean = sum(update_seconds) / len(update_seconds) if update_seconds else 0.0
            print(f"{size:>8} {first.seconds:>14.2f} {first.seconds / size * 1000:>14.1f} "
                  f"{len(update_seconds) + 1:>15} {mean:>21.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
