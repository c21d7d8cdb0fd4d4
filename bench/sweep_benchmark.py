#!/usr/bin/env python3
"""A sweep against the unit-test fakes: N submissions of one job script (a script and a supporting
file) in one default pass, with 1 and 4 workers. Prints the requests per endpoint and the pass's
duration (the tool's own cost: the fakes answer at once). Figures, not asserts.

    .venv/bin/python bench/sweep_benchmark.py [--size 1000]
"""

from __future__ import annotations

import argparse
import collections
import os
import pwd
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import jobbergate_sync  # noqa: E402
import provenance  # noqa: E402
from pass_benchmark import pending_backlog  # noqa: E402


def endpoint(method: str, url: str) -> str:
    path = re.sub(r"/upload/[^/]+$", "/upload/{file}", re.sub(r"/\d+(?=/|$)", "/{id}", urlparse(url).path))
    return f"{method} {path}"


def one_pass(size: int, workers: int, user: pwd.struct_passwd) -> tuple[float, collections.Counter, int]:
    with pending_backlog(size, user, script_id=1, execution_directory="{root}/{user}/{id}") as (config, _, rsps, api, _):
        os.environ["JOBBERGATE_SYNC_RUN_WORKERS"] = str(workers)
        try:
            began = time.perf_counter()
            assert jobbergate_sync.main(["--config", config, "-q"]) == 0
            seconds = time.perf_counter() - began
        finally:
            os.environ.pop("JOBBERGATE_SYNC_RUN_WORKERS", None)
        counts = collections.Counter(endpoint(call.request.method, call.request.url) for call in rsps.calls)
        submitted = sum(submission["status"] == "SUBMITTED" for submission in api.submissions.values())
    return seconds, counts, submitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    size = parser.parse_args().size
    provenance.print_header()
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    for workers in (1, 4):
        seconds, counts, submitted = one_pass(size, workers, user)
        print(f"workers={workers}: {submitted} of {size} submitted in one pass of {seconds:.2f} s "
              f"({seconds / size * 1000:.1f} ms a submission)")
        for name, count in sorted(counts.items()):
            print(f"  {count:>6}  {name}")


if __name__ == "__main__":
    main()
