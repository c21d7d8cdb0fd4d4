#!/usr/bin/env python3
"""Prints what one pass's job metrics cost: InfluxDB query requests and bytes read, API requests and
bytes sent, wall time and peak RSS, for 10, 100 and 1,000 profiled running jobs.

A real InfluxDB 1.x (the integration stack's, or --influxdb-url) is filled with synthetic profiles
in Slurm's line protocol: each job has --tasks tasks on one of 16 hosts, a sample every --interval
seconds over --span seconds, ten measurements a sample. The API, OIDC issuer and slurmrestd are the
unit-test fakes (in-process); only InfluxDB is real. Each pass runs in a fresh process, whose peak
RSS (getrusage) is also given less what it held before the pass began. Figures, not asserts.

    python bench/metrics_benchmark.py [--sizes 10,100,1000] [--first-max 100]

Two passes per size: "first", the jobs met for the first time (GET agent/metrics for each, their
whole profile read and uploaded; only for sizes up to --first-max, as an hour of 1,000 jobs is
14.4 M points), and "steady", the jobs followed since a pass 90 s earlier (marks in the journal).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import responses

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_stack_config import JWT_KEY, write_fake_stack_config  # noqa: E402

import jobbergate_sync  # noqa: E402
from fakes import CLIENT_ID, FakeIssuer, FakeJobbergate, FakeSlurm  # noqa: E402

FIRST_JOB = 500_000
HOSTS = 16
PASS_GAP = 90  # seconds between the "steady" pass and the one before it
WRITE_BATCH = 50_000  # lines per POST /write


def host_of(job: int) -> str:
    return f"node{job % HOSTS:02d}"


def write_lines(url: str, database: str, lines: list[str]) -> None:
    requests.post(f"{url}/write", params={"db": database, "precision": "s"}, data="\n".join(lines),
                  timeout=300).raise_for_status()


def fill(url: str, database: str, jobs: int, tasks: int, interval: int, span: int, now: int) -> float:
    """Synthetic profiles in Slurm's line protocol; returns the seconds the writes took."""
    for statement in (f"DROP DATABASE {database}", f"CREATE DATABASE {database}"):
        requests.post(f"{url}/query", params={"q": statement}, timeout=60).raise_for_status()
    began = time.perf_counter()
    lines: list[str] = []
    for sample_time in range(now - span, now + 1, interval):
        for job in range(FIRST_JOB, FIRST_JOB + jobs):
            for task in range(tasks):
                lines += [f"{name},job={job},step=0,task={task},host={host_of(job)} value={(sample_time + number) % 4096} "
                          f"{sample_time}" for number, name in enumerate(jobbergate_sync.PROFILE_MEASUREMENTS)]
            if len(lines) >= WRITE_BATCH:
                write_lines(url, database, lines)
                lines = []
    if lines:
        write_lines(url, database, lines)
    return time.perf_counter() - began


def write_config(directory: Path, influxdb_url: str, database: str) -> str:
    return write_fake_stack_config(directory, {"jobbergate": {"max_pages": 1000}, "run": {"deadline": 600},
                                               "influxdb": {"url": influxdb_url, "database": database}})


class CountingApi(FakeJobbergate):
    """The fake API, counting the metric uploads instead of keeping their rows."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.put_bytes = 0
        self.put_rows = 0

    def _metrics_put(self, request: Any, body: bytes, submission_id: str) -> tuple:
        import msgpack
        self.put_bytes += len(body)
        self.put_rows += len(msgpack.unpackb(body))
        return 204, {}, ""


def child(directory: Path, jobs: int, tasks: int, now: int, steady: bool) -> None:
    """One process, one pass; with `steady`, the journal first gets every job reported RUNNING and
    its series marked up to PASS_GAP seconds ago. Prints the figures as JSON."""
    config = str(directory / "config.ini")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru(jobbergate_sync.load_config(config, {}).influxdb.url)
        api = CountingApi(rsps, FakeIssuer(rsps))
        slurm = FakeSlurm(rsps, JWT_KEY)
        for number, job in enumerate(range(FIRST_JOB, FIRST_JOB + jobs), start=1):
            api.add_submission(number, status="SUBMITTED", slurm_job_id=job)
            slurm.add_job(job, "RUNNING")
        journal = jobbergate_sync.Journal(str(directory / "state" / "journal.sqlite3"))
        for number, job in enumerate(range(FIRST_JOB, FIRST_JOB + jobs), start=1):
            journal.record_report(number, jobbergate_sync.submission_tag(CLIENT_ID, number),
                                  jobbergate_sync.StateReport(job, "RUNNING", None, "{}"))
            if steady:
                journal.follow_metrics(jobbergate_sync.MetricsJob(number, job, {
                    (host_of(job), 0, task): now - PASS_GAP for task in range(tasks)}))
        journal.db.close()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        began = time.perf_counter()
        code = jobbergate_sync.main(["--config", config])
        seconds = time.perf_counter() - began
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({
            "code": code, "seconds": round(seconds, 2), "peak_mb": round(peak / 1024, 1),
            "pass_mb": round((peak - before) / 1024, 1), "marks_gets": len(api.called("metrics_marks")),
            "puts": len(api.called("metrics_put")), "put_kb": round(api.put_bytes / 1024), "rows": api.put_rows}))


def one_pass(directory: Path, jobs: int, tasks: int, now: int, steady: bool) -> dict[str, Any]:
    shutil.rmtree(directory / "state", ignore_errors=True)
    (directory / "state").mkdir(mode=0o700)
    command = [sys.executable, __file__, "--child", str(directory), str(jobs), str(tasks), str(now),
               "steady" if steady else "first"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # the pass's own account of its InfluxDB reads: "job metrics: N job(s) read with Q ... request(s), B bytes"
    [read] = [json.loads(line)["message"] for line in result.stderr.splitlines() if '"job metrics:' in line]
    words = read.split()
    return {**figures, "influx_requests": int(words[words.index("with") + 1]), "influx_kb": round(int(words[-2]) / 1024)}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        directory, jobs, tasks, now, kind = sys.argv[2:7]
        child(Path(directory), int(jobs), int(tasks), int(now), kind == "steady")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--influxdb-url", default=os.environ.get("JGS_INFLUXDB_URL", "http://127.0.0.1:8086"))
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--first-max", type=int, default=100, help="the largest size whose first pass is run")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--span", type=int, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    arguments = parser.parse_args()
    url = arguments.influxdb_url.rstrip("/")
    now = int(time.time())
    print(f"job metrics per pass: {arguments.tasks} tasks a job, a sample every {arguments.interval} s over "
          f"{arguments.span} s, InfluxDB {url}")
    print(f"{'jobs':>6} {'pass':>6} {'fill s':>7} {'influx req':>10} {'influx KB':>10} {'API GET':>8} {'API PUT':>8} "
          f"{'PUT KB':>8} {'rows':>8} {'wall s':>7} {'peak MB':>8} {'pass MB':>8}")
    for size in [int(size) for size in arguments.sizes.split(",") if size]:
        database = f"jgs_bench_metrics_{size}"
        filled = fill(url, database, size, arguments.tasks, arguments.interval, arguments.span, now)
        directory = Path(tempfile.mkdtemp(prefix="jgs-bench-metrics-"))
        try:
            write_config(directory, url, database)
            for steady in ([False] if size <= arguments.first_max else []) + [True]:
                figures = one_pass(directory, size, arguments.tasks, now, steady)
                print(f"{size:>6} {'steady' if steady else 'first':>6} {filled:>7.1f} {figures['influx_requests']:>10} "
                      f"{figures['influx_kb']:>10} {figures['marks_gets']:>8} {figures['puts']:>8} {figures['put_kb']:>8} "
                      f"{figures['rows']:>8} {figures['seconds']:>7} {figures['peak_mb']:>8} {figures['pass_mb']:>8}"
                      + ("" if figures["code"] == 0 else f"  exit {figures['code']}"), flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            if not arguments.keep:
                requests.post(f"{url}/query", params={"q": f"DROP DATABASE {database}"}, timeout=60)


if __name__ == "__main__":
    main()
