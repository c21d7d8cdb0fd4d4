#!/usr/bin/env python3
"""Side by side on the integration stack: how fast jobbergate-sync submits, against the upstream
jobbergate-agent driving the same API in the same run, and against what the API itself can serve.
Prints one table; figures, not asserts.

    .venv/bin/python bench/submit_benchmark.py [--sizes 30,200] [--sweep 200]

Needs the stack up (tests/integration/stack.sh up), this checkout's tool installed in .venv, and
jobbergate-agent 5.12.0, which it installs from PyPI when missing into a venv inside the 22.05 Slurm
leg's root (its submit runs `sbatch`; every root has python3 and python3-venv): the wheels are
downloaded by this host's pip, then installed by the root's.

Each round (one backlog shape, one number of API workers) holds `--lock FILE` when given (for
machines where others use the stack too) and puts the API back on one uvicorn worker when it ends.
In a round, for each contender, the benchmark creates the backlog through the API as alice (held
jobs: nothing runs), times it, then rejects or aborts what is left and cancels the jobs:
- the tool with `[run] workers` = 1 and the default 4: a whole `jobbergate-sync --once` process,
  timed from its start to the end of its submit phase (its log line that starts the update phase);
- the upstream agent (API on 2 workers): one call of its `submit_pending_jobs` coroutine, in-process,
  after a first listing has fetched its token; its own cluster (the stack's other-slurm client),
  single-user mapper;
- the API's bare bound (API on 1 worker): 4 threads doing only the tool's requests to the API, the
  downloads (once per file for a sweep) and the agent/submitted posts, with made-up job ids; and the
  same with each job really submitted to slurmrestd first (what bounds a sweep, whose downloads are
  gone: the machine's cores are shared by the API, slurmrestd, slurmctld and the agent).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import helpers  # noqa: E402
import provenance  # noqa: E402
from tool import SCRIPT, Tool  # noqa: E402

LEG = "2205"
UPSTREAM_PYTHON = "/opt/upstream-agent/bin/python"
UPSTREAM_REQUIREMENT = "jobbergate-agent==5.12.0"
UPSTREAM_CLUSTER = "other-slurm"
JOB_NAME = "jgs-submit-bench"
FILES = {"job.sh": f"#!/bin/bash\n#SBATCH --job-name={JOB_NAME} --hold --time=1\nhostname\n".encode(),
         "input.txt": b"supporting data\n" * 64}
BARE_THREADS = 4
REQUEST_LINE = re.compile(r"^(GET|POST|PUT|DELETE) (\S+) -> HTTP \d+")

UPSTREAM_CALL = """
import asyncio, json, resource, time
from jobbergate_agent.jobbergate.submit import fetch_pending_submissions, submit_pending_jobs

async def timed():
    await fetch_pending_submissions()  # its token and connection, as a running agent has them
    began = time.monotonic()
    await submit_pending_jobs()
    return time.monotonic() - began

seconds = asyncio.run(timed())
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ensure_upstream_agent(root: str) -> None:
    """jobbergate-agent 5.12.0 in its own venv inside the Slurm root, installed once."""
    if os.path.exists(root + UPSTREAM_PYTHON):
        return
    wheels = "/opt/upstream-agent-wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "-d", root + wheels, UPSTREAM_REQUIREMENT],
                   check=True)
    chroot = ["/usr/sbin/chroot", root]
    subprocess.run([*chroot, "python3", "-m", "venv", os.path.dirname(os.path.dirname(UPSTREAM_PYTHON))], check=True)
    subprocess.run([*chroot, UPSTREAM_PYTHON, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels,
                    UPSTREAM_REQUIREMENT], check=True)


@contextlib.contextmanager
def stack_lock(path: str) -> Iterator[None]:
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stack_sh(*arguments: str, api_workers: int = 1) -> None:
    environment = {**os.environ, "JGS_API_WORKERS": str(api_workers)}
    subprocess.run(["bash", str(ROOT / "tests" / "integration" / "stack.sh"), *arguments], check=True,
                   env=environment, stdout=subprocess.DEVNULL)


class Bench:
    def __init__(self, stack: helpers.Stack, scratch: Path):
        self.stack = stack
        self.scratch = scratch
        self.alice = helpers.UserClient(stack, "alice")
        self.scripts: list[int] = []  # the job scripts submissions are made of, created once
        self.requests: dict[str, int] = {}  # per endpoint, of the last tool run with the default workers
        alice = pwd.getpwnam("alice")
        for directory in ("/home/alice/jgs-bench", "/home/alice/jgs-bench/upstream"):  # sbatch wants it to exist
            os.makedirs(directory, exist_ok=True)
            os.chown(directory, alice.pw_uid, alice.pw_gid)

    def job_scripts(self, count: int) -> list[int]:
        while len(self.scripts) < count:
            self.scripts.append(self.alice.create_job_script(helpers.unique("bench"), FILES)["id"])
        return self.scripts[:count]

    def backlog(self, size: int, sweep: bool, cluster: str, directory: str) -> list[int]:
        scripts = self.job_scripts(1)[:1] * size if sweep else self.job_scripts(size)
        return [self.alice.create_submission(script, helpers.unique("bench"), client_id=cluster,
                                             execution_directory=directory)["id"] for script in scripts]

    def clean_up(self) -> None:
        for cluster in (self.stack.client_id, UPSTREAM_CLUSTER):
            helpers.AgentClient(self.stack, cluster).drain("submit benchmark done")
        stack_sh("slurm", LEG, "scancel", f"--name={JOB_NAME}")

    def tool(self, size: int, sweep: bool, workers: int) -> dict[str, Any]:
        """Seconds from the process's start to the end of its submit phase, whole process, peak RSS."""
        submissions = self.backlog(size, sweep, self.stack.client_id, "/home/alice/jgs-bench/tool")
        tool = Tool(self.scratch / f"tool-{workers}", self.stack, self.stack.client_id, leg=LEG,
                    run__workers=workers, run__deadline=600, run__interval=600)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("JOBBERGATE_SYNC_")}
        began_wall, began = time.time(), time.monotonic()
        process = subprocess.Popen([str(SCRIPT), "--once", "-v", "--log-format", "json", "--config", str(tool.config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment, cwd="/")
        stderr = process.stderr.read() if process.stderr else ""
        _, status, usage = os.wait4(process.pid, 0)
        whole = time.monotonic() - began
        lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        summary = next(line for line in lines if line["message"].startswith("pass finished"))
        if summary["submitted"] != len(submissions):
            raise SystemExit(f"the tool submitted {summary['submitted']} of {len(submissions)}:\n{stderr[-3000:]}")
        update_starts = next(line for line in lines if "active submission(s)" in line["message"])
        submit_ends = datetime.strptime(update_starts["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if workers > 1:
            self.requests = count_requests(lines)
        self.clean_up()
        return {"seconds": submit_ends - began_wall, "whole": whole, "rss_mb": usage.ru_maxrss / 1024,
                "cpu": usage.ru_utime + usage.ru_stime, "exit": os.waitstatus_to_exitcode(status)}

    def upstream(self, size: int, sweep: bool) -> dict[str, Any]:
        self.backlog(size, sweep, UPSTREAM_CLUSTER, "/home/alice/jgs-bench/upstream")
        settings = {
            "BASE_API_URL": self.stack.api_url.removesuffix("/jobbergate"),
            "OIDC_DOMAIN": self.stack.oidc_domain, "OIDC_USE_HTTPS": "false",
            "OIDC_CLIENT_ID": UPSTREAM_CLUSTER, "OIDC_CLIENT_SECRET": self.stack.client_secrets[UPSTREAM_CLUSTER],
            "SLURM_USER_MAPPER": "single-user-mapper", "SINGLE_USER_SUBMITTER": "alice", "X_SLURM_USER_NAME": "alice",
            "MAX_PAGES_PER_CYCLE": "50", "CACHE_DIR": "/tmp/upstream-agent-cache",
        }
        arguments = [f"JOBBERGATE_AGENT_{key}={value}" for key, value in settings.items()]
        completed = subprocess.run(
            ["bash", str(ROOT / "tests" / "integration" / "stack.sh"), "slurm", LEG, "env", *arguments,
             UPSTREAM_PYTHON, "-c", UPSTREAM_CALL], capture_output=True, text=True, timeout=1800)
        outcome = next((json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")), None)
        pending = len(helpers.AgentClient(self.stack, UPSTREAM_CLUSTER).pending())
        self.clean_up()
        if outcome is None or pending:
            raise SystemExit(f"the upstream agent left {pending} pending:\n{completed.stdout[-2000:]}{completed.stderr[-3000:]}")
        return outcome

    def bare_bound(self, size: int, sweep: bool, slurm: bool = False) -> dict[str, Any]:
        """What the API serves when asked only for what the tool asks, BARE_THREADS at a time; with
        `slurm`, each job is first submitted to slurmrestd as the tool would."""
        directory = "/home/alice/jgs-bench/bare"
        submissions = self.backlog(size, sweep, self.stack.client_id, directory)
        control = helpers.SlurmControl(self.stack, LEG)
        agent = helpers.AgentClient(self.stack, self.stack.client_id)
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=BARE_THREADS))
        session.headers["Authorization"] = f"Bearer {agent.token}"
        pending = {item["id"]: item for item in agent.pending()}
        files = {(entry["parent_id"], entry["filename"]) for submission_id in submissions
                 for entry in pending[submission_id]["job_script"]["files"]}
        base = self.stack.api_url

        def download(key: tuple[int, str]) -> None:
            session.get(f"{base}/job-scripts/{key[0]}/upload/{key[1]}").raise_for_status()

        def report(position: int, submission_id: int) -> None:
            if not sweep:
                for entry in pending[submission_id]["job_script"]["files"]:
                    download((entry["parent_id"], entry["filename"]))
            job_id = submit_held(control, directory) if slurm else 900000 + position
            session.post(f"{base}/job-submissions/agent/submitted",
                         json={"id": submission_id, "slurm_job_id": job_id, "slurm_job_state": "PENDING",
                               "slurm_job_info": "{}"}).raise_for_status()

        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(BARE_THREADS) as pool:
            if sweep:
                list(pool.map(download, sorted(files)))
            list(pool.map(report, range(len(submissions)), submissions))
        seconds = time.monotonic() - began
        self.clean_up()
        return {"seconds": seconds}


def submit_held(control: helpers.SlurmControl, directory: str) -> int:
    """POST job/submit (v0.0.38, the 2205 leg) as alice, held; Slurm says so with an error and the id."""
    job = {"name": JOB_NAME, "hold": True, "time_limit": 1, "current_working_directory": directory,
           "environment": {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "USER": "alice"}}
    response = control.request("POST", f"/slurm/{control.api_version}/job/submit", "alice",
                               json={"script": FILES["job.sh"].decode(), "job": job})
    return int(response.json()["job_id"])


def count_requests(lines: list[dict[str, Any]]) -> dict[str, int]:
    """Requests per endpoint, from the tool's debug lines (ids and file names folded)."""
    counts: dict[str, int] = {}
    for line in lines:
        match = REQUEST_LINE.match(line["message"])
        if match:
            path = re.sub(r"^https?://[^/]+", "", match.group(2).split("?")[0])
            path = re.sub(r"/upload/[^/]+$", "/upload/{file}", re.sub(r"/\d+(?=/|$)", "/{id}", path))
            key = f"{match.group(1)} {path}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="30,200", help="backlogs of distinct job scripts, comma-separated")
    parser.add_argument("--sweep", type=int, default=200, help="a backlog of submissions of one job script (0: none)")
    parser.add_argument("--lock", default="", help="a lock file held per round, where others share the stack")
    options = parser.parse_args()
    provenance.print_header()
    shapes = [(int(size), False) for size in options.sizes.split(",")] + ([(options.sweep, True)] if options.sweep else [])
    stack = helpers.get_stack().check()
    ensure_upstream_agent(str(stack.leg(LEG).root))
    scratch = Path(tempfile.mkdtemp(prefix="jgs-submit-bench-"))
    bench = Bench(stack, scratch)
    rows = []
    try:
        for size, sweep in shapes:
            row: dict[str, Any] = {"shape": f"{'sweep of one script' if sweep else 'distinct scripts'}, N={size}"}
            for api_workers in (1, 2):
                with stack_lock(options.lock):
                    try:
                        stack_sh("restart", "api", api_workers=api_workers)
                        for workers in (1, 4):
                            row[(api_workers, workers)] = bench.tool(size, sweep, workers)
                        if api_workers == 1:
                            row["bare"] = bench.bare_bound(size, sweep)
                            row["bare+slurm"] = bench.bare_bound(size, sweep, slurm=True)
                        else:
                            row["upstream"] = bench.upstream(size, sweep)
                    finally:
                        bench.clean_up()
                        stack_sh("restart", "api")
            rows.append((size, row))
            print(f"done: {row['shape']}", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(rows, bench.requests)
    return 0


def per_submission_ms(result: dict[str, Any], size: int) -> float:
    return result["seconds"] / size * 1000


def print_table(rows: list[tuple[int, dict[str, Any]]], requests_counted: dict[str, int]) -> None:
    print("| backlog | API workers | tool, 1 worker | tool, 4 workers | upstream agent | API bare bound | "
          "ratio (target) | tool CPU | tool peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, row in rows:
        sweep = row["shape"].startswith("sweep")
        for api_workers in (1, 2):
            one, four = row[(api_workers, 1)], row[(api_workers, 4)]
            cells = [f"{per_submission_ms(one, size):.1f} ms", f"{per_submission_ms(four, size):.1f} ms "
                     f"({four['whole'] / size * 1000:.1f} whole process)"]
            if api_workers == 1:
                bare = per_submission_ms(row["bare"], size)
                ratio = f"{per_submission_ms(four, size) / bare:.2f} × bare (≤ 1.2)"
                cells += ["", f"{bare:.1f} ms ({per_submission_ms(row['bare+slurm'], size):.1f} with the Slurm submits)"]
            else:
                upstream = per_submission_ms(row["upstream"], size)
                target = "≤ 0.3" if sweep else "≤ 0.5"
                ratio = f"{per_submission_ms(four, size) / upstream:.2f} × upstream ({target})"
                cells += [f"{upstream:.1f} ms (RSS {row['upstream']['rss_mb']:.0f} MB)", ""]
            print(f"| {row['shape']} | {api_workers} | {' | '.join(cells)} | {ratio} | "
                  f"{four['cpu'] / size * 1000:.1f} ms | {max(one['rss_mb'], four['rss_mb']):.0f} MB |")
    print()
    print("Requests of the last tool pass with 4 workers (" + rows[-1][1]["shape"] + "):")
    for endpoint, count in sorted(requests_counted.items()):
        print(f"  {count:>6}  {endpoint}")


if __name__ == "__main__":
    sys.exit(main())
