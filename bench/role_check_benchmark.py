#!/usr/bin/env python3
"""Prints what asking Slurm which head node is in charge ([run] role = auto) adds to a pass, on the
integration stack: passes of one configured instance with role = auto and with role = always, in
alternation, with nothing pending for its cluster. Figures, not asserts.

    .venv/bin/python bench/role_check_benchmark.py [--leg 2205] [--rounds 11] [--cluster other-slurm]

Each pass is a whole `jobbergate-sync --once` process, as cron starts it; the first pass of each
setting (token fetch, API version choice, the first settle) is not counted. Medians are printed, with
the role check's own requests (GET ping, once the API version is remembered).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import helpers  # noqa: E402
from tool import Tool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leg", default=None)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--cluster", default="other-slurm")
    options = parser.parse_args()
    stack = helpers.get_stack()
    with tempfile.TemporaryDirectory(prefix="jgs-role-bench-") as directory:
        tools = {role: Tool(Path(directory) / role, stack, options.cluster, leg=options.leg, run__role=role)
                 for role in ("auto", "always")}
        seconds: dict[str, list[float]] = {role: [] for role in tools}
        for round_number in range(options.rounds + 1):
            for role, tool in tools.items():
                result = tool.run()
                if result.returncode not in (0, 1):
                    sys.exit(f"role = {role}: exit {result.returncode}\n{result.stderr[-2000:]}")
                if round_number:
                    seconds[role].append(result.seconds)
    leg = stack.leg(options.leg)
    print(f"leg {leg.name} ({leg.api_version}), {options.rounds} passes each, nothing pending for {options.cluster}")
    for role, values in seconds.items():
        print(f"role = {role:<6}  median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    print(f"role check: +{statistics.median(seconds['auto']) - statistics.median(seconds['always']):.3f} s per pass")


if __name__ == "__main__":
    main()
