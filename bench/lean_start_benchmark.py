#!/usr/bin/env python3
"""Prints how long a no-op pass (nothing pending, nothing active) of the installed `jobbergate-sync`
takes as a whole process, against `python -c "import requests, click"` in the same venv, on the real
integration stack's API. Figures, not asserts.

    flock /var/tmp/jgs-stack.lock .venv/bin/python bench/lean_start_benchmark.py [--rounds 15]

The two commands alternate, so that a busy machine slows both alike; the medians and their ratio are
printed. The pass runs as a cluster with nothing pending or active (the first such of the stack's
agent clients; none: nothing is measured). A first pass, not counted, caches the API token as every
later pass of a timer finds it; bytecode is compiled first, as an installed package has it.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import helpers  # noqa: E402
from tool import SCRIPT, Tool  # noqa: E402


def wall(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    stack = helpers.get_stack().check()
    usable = [client for client in (stack.client_id, "other-slurm")
              if not helpers.AgentClient(stack, client).pending() and not helpers.AgentClient(stack, client).active()]
    if not usable:
        print("no agent client of the stack is idle (nothing pending or active): nothing measured", file=sys.stderr)
        return 1
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    compileall.compile_file(str(ROOT / "jobbergate_sync.py"), quiet=1)
    with tempfile.TemporaryDirectory() as directory:
        tool = Tool(Path(directory) / "tool", stack, usable[0])
        no_op = [str(SCRIPT), "--once", "--config", str(tool.config)]
        baseline = [sys.executable, "-c", "import requests, click"]
        wall(no_op, env)
        passes, imports = [], []
        for _ in range(rounds):
            imports.append(wall(baseline, env))
            passes.append(wall(no_op, env))
    pass_median, import_median = statistics.median(passes), statistics.median(imports)
    print(f"no-op pass as cluster {usable[0]}, {rounds} rounds, medians")
    for name, seconds in (('python -c "import requests, click"', import_median),
                          ("jobbergate-sync --once (no-op pass)", pass_median)):
        print(f"{name:<40} {seconds * 1000:>8.0f} ms")
    print(f"{'ratio':<40} {pass_median / import_median:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
