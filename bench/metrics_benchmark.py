#!/usr/bin/env python3
"""Prints what one pass's job metrics cost: InfluxDB query requests and bytes read, API requests and
bytes sent, wall times and peak RSS, for 10, 100 and 1,000 profiled running jobs.

A real InfluxDB 1.x (the integration stack's, or --influxdb-url) is filled with synthetic profiles
in Slurm's line protocol: each job has --tasks tasks on one of 16 hosts, a sample every --interval
seconds over --span seconds, ten measurements a sample. Each pass is the installed jobbergate-sync
in its own process, as cron runs it; its API, OIDC issuer and slurmrestd are the unit-test fakes,
served to it over HTTP on loopback (fake_stack_http.py), so its peak RSS (VmHWM: peak_memory.py)
and its times are its own. Only InfluxDB is real. Figures, not asserts.

    python bench/metrics_benchmark.py [--sizes 10,100,1000] [--first-max 100] [--upstream]

Two passes per size: "first", the jobs met for the first time (GET agent/metrics for each, their
whole profile read and uploaded; only for sizes up to --first-max, as an hour of 1,000 jobs is
14.4 M points), and "steady", the jobs followed since a pass 90 s earlier (marks in the journal).

With --upstream, each pass is also run by the upstream agent (jobbergate-agent, installed from PyPI
into its own virtualenv on first use): its `update_job_metrics` for the same jobs, against the same
InfluxDB database, in a fresh process (upstream_metrics_driver.py). The agent speaks httpx, which
`responses` cannot fake, so its API is a fake of the two agent/metrics routes over HTTP on loopback,
answering the marks the jobbergate-sync side holds in its journal. Its InfluxDB requests are counted
by wrapping influxdb-python's request method in that process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import requests
import responses

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jobbergate_sync  # noqa: E402
import provenance  # noqa: E402
from fake_stack_config import JWT_KEY, write_fake_stack_config  # noqa: E402
from fake_stack_http import LoopbackFakes  # noqa: E402
from fakes import API, ISSUER, METRICS_MAX_ROWS, SLURM, FakeIssuer, FakeJobbergate, FakeSlurm  # noqa: E402

FIRST_JOB = 500_000
HOSTS = 16
PASS_GAP = 90  # seconds between the "steady" pass and the one before it
WRITE_BATCH = 50_000  # lines per POST /write
UPSTREAM_PACKAGE = "jobbergate-agent==5.12.0"
UPSTREAM_DRIVER = Path(__file__).resolve().parent / "upstream_metrics_driver.py"
METRICS_ROUTE = re.compile(r"/jobbergate/job-submissions/agent/metrics/(\d+)$")


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


def write_config(directory: Path, fakes: LoopbackFakes, influxdb_url: str, database: str) -> str:
    return write_fake_stack_config(directory, {
        "jobbergate": {"api_url": fakes.url(API), "max_pages": 1000}, "oidc": {"issuer": fakes.url(ISSUER)},
        "slurmrestd": {"url": fakes.url(SLURM)}, "run": {"deadline": 600},
        "influxdb": {"url": influxdb_url, "database": database}})


class CountingApi(FakeJobbergate):
    """The fake API, counting the metric uploads instead of keeping their rows."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.put_bytes = 0
        self.put_rows = 0
        self.count_lock = threading.Lock()  # the proxy answers the tool's workers side by side

    def _metrics_put(self, request: Any, body: bytes, submission_id: str) -> tuple:
        import msgpack
        rows = len(msgpack.unpackb(body))
        with self.count_lock:
            self.put_bytes += len(body)
            self.put_rows += rows
        return 204, {}, ""


def prepare_journal(directory: Path, jobs: int, tasks: int, now: int, steady: bool) -> None:
    """A fresh state directory whose journal has every job reported RUNNING; with `steady`, each job's
    series are also marked up to PASS_GAP seconds ago."""
    shutil.rmtree(directory / "state", ignore_errors=True)
    (directory / "state").mkdir(mode=0o700)
    journal = jobbergate_sync.Journal(str(directory / "state" / "journal.sqlite3"))
    for number, job in enumerate(range(FIRST_JOB, FIRST_JOB + jobs), start=1):
        journal.record_report(number, jobbergate_sync.StateReport(job, "RUNNING", None, "{}"))
        if steady:
            journal.follow_metrics(jobbergate_sync.MetricsJob(number, job, {
                (mark["node_host"], mark["step"], mark["task"]): mark["max_time"] for mark in marks_of(job, tasks, now)}))
    journal.db.close()


# What the installed jobbergate-sync command runs (main, its exit code the process's), then its own peak RSS.
TOOL_WITH_PEAK = f"""import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import jobbergate_sync, peak_memory
code = jobbergate_sync.main(sys.argv[1:])
print(peak_memory.peak_rss_mb())
sys.exit(code)
"""


JOB_METRICS_LINE = re.compile(r"job metrics: \d+ job\(s\) read with (\d+) InfluxDB query request\(s\), (\d+) bytes, "
                              r"in ([0-9.]+) s")


def sync_pass(directory: Path, influxdb_url: str, database: str, jobs: int, tasks: int, now: int,
              steady: bool) -> dict[str, Any]:
    """One jobbergate-sync pass, the installed tool in its own process, its peers the fakes served on
    loopback (only InfluxDB is real). Its figures: peak RSS of that process alone, the wall
    time of the process, of the pass (its summary's duration) and of its job-metrics phase (its
    log line), InfluxDB requests and bytes (that line too), and what the fake API was sent."""
    prepare_journal(directory, jobs, tasks, now, steady)
    log_file = directory / "sync.log"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, LoopbackFakes([API, ISSUER, SLURM]) as fakes:
        config = write_config(directory, fakes, influxdb_url, database)
        api = CountingApi(rsps, FakeIssuer(rsps))
        slurm = FakeSlurm(rsps, JWT_KEY)
        # owned, here and in Slurm, by a local account, which [mapper] domains maps the owner's email to
        owner = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        for number, job in enumerate(range(FIRST_JOB, FIRST_JOB + jobs), start=1):
            api.add_submission(number, status="SUBMITTED", slurm_job_id=job, email=f"{owner.pw_name}@example.com")
            slurm.add_job(job, "RUNNING", user=owner.pw_name)
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with open(log_file, "w") as log:
            began = time.perf_counter()
            process = subprocess.run([sys.executable, "-c", TOOL_WITH_PEAK, "--config", config], env=environment,
                                     cwd=directory, stdout=subprocess.PIPE, stderr=log, text=True)
            process_seconds = time.perf_counter() - began
    log_text = log_file.read_text()
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    reads = [JOB_METRICS_LINE.search(record["message"]) for record in records if "job metrics:" in record["message"]]
    durations = [record["duration_s"] for record in records if "duration_s" in record]
    if len(reads) != 1 or len(durations) != 1 or reads[0] is None:
        raise SystemExit(f"the jobbergate-sync pass (exit {process.returncode}) logged no job-metrics read and summary:\n"
                         f"{log_text[-3000:]}")
    [read], [duration] = reads, durations
    return {"code": process.returncode, "process_seconds": round(process_seconds, 2), "seconds": round(duration, 2),
            "phase_seconds": round(float(read.group(3)), 2), "peak_mb": float(process.stdout.split()[-1]),
            "marks_gets": len(api.called("metrics_marks")), "puts": len(api.called("metrics_put")),
            "put_kb": round(api.put_bytes / 1024), "rows": api.put_rows, "influx_requests": int(read.group(1)),
            "influx_kb": round(int(read.group(2)) / 1024)}


def marks_of(job: int, tasks: int, now: int) -> list[dict[str, Any]]:
    """The API's answer to GET agent/metrics for a job whose metrics were uploaded PASS_GAP seconds ago."""
    return [{"max_time": now - PASS_GAP, "node_host": host_of(job), "step": 0, "task": task} for task in range(tasks)]


def influxdb_alone(url: str, database: str, jobs: int, tasks: int, now: int, steady: bool) -> float:
    """The seconds InfluxDB takes to answer the queries a pass makes (the default workers' share each,
    as many at a time), read and thrown away: the floor of any reader of the same samples."""
    workers = jobbergate_sync.CONFIG_SCHEMA["run"]["workers"].default
    followed = [jobbergate_sync.MetricsJob(number, job, {
        (mark["node_host"], mark["step"], mark["task"]): mark["max_time"] for mark in marks_of(job, tasks, now)}
        if steady else {}) for number, job in enumerate(range(FIRST_JOB, FIRST_JOB + jobs), start=1)]
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))

    def answer(query: jobbergate_sync.ProfileQuery) -> None:
        params = {"db": database, "q": query.text, "epoch": "s", "chunked": "true",
                  "chunk_size": str(jobbergate_sync.INFLUXDB_CHUNK_SIZE)}
        with session.get(f"{url}/query", params=params, stream=True, timeout=600) as response:
            response.raise_for_status()
            for _ in response.iter_content(1 << 16):
                pass

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(answer, jobbergate_sync.profile_queries(followed, parts=workers)))
    return time.perf_counter() - began


class MetricsApiServer(ThreadingHTTPServer):
    """GET and PUT job-submissions/agent/metrics/{id} over HTTP on loopback, counting what they were sent.
    GET answers `marks` (empty on a first pass); PUT keeps the API's limit of METRICS_MAX_ROWS rows."""

    daemon_threads = True

    def __init__(self, marks: dict[int, list[dict[str, Any]]]):
        super().__init__(("127.0.0.1", 0), MetricsApiHandler)
        self.marks = marks
        self.lock = threading.Lock()
        self.counts = {"marks_gets": 0, "puts": 0, "put_bytes": 0, "rows": 0, "refused": 0}

    def count(self, **increments: int) -> None:
        with self.lock:
            for name, increment in increments.items():
                self.counts[name] += increment


class MetricsApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API's server
    disable_nagle_algorithm = True  # the body goes in a second write: no delayed-ACK wait per response
    server: MetricsApiServer

    def answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        route = METRICS_ROUTE.match(self.path)
        if route is None:
            self.answer(404)
            return
        submission_id = int(route.group(1))
        self.server.count(marks_gets=1)
        self.answer(200, json.dumps({"job_submission_id": submission_id,
                                     "max_times": self.server.marks.get(submission_id, [])}).encode())

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        import msgpack
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if METRICS_ROUTE.match(self.path) is None:
            self.answer(404)
            return
        rows = len(msgpack.unpackb(body))
        self.server.count(puts=1, put_bytes=len(body), rows=rows, refused=int(rows > METRICS_MAX_ROWS))
        self.answer(400 if rows > METRICS_MAX_ROWS else 204)

    def log_message(self, *args: Any) -> None:
        """Quiet: the counts are the record."""


def upstream_python(venv: Path) -> Path:
    """The upstream agent's own virtualenv, made and filled from PyPI on first use (pip does not go to
    the network when the pinned version is there)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", UPSTREAM_PACKAGE],
                   check=True, stdout=subprocess.DEVNULL)
    return python


def influx_dsn(url: str, database: str) -> str:
    """The agent's INFLUX_DSN (influxdb-python's from_dsn) for an http(s) InfluxDB URL."""
    scheme, address = url.split("://", 1)
    return f"{'https+influxdb' if scheme == 'https' else 'influxdb'}://{address}/{database}"


def upstream_pass(python: Path, directory: Path, url: str, database: str, jobs: int, tasks: int, now: int,
                  steady: bool) -> dict[str, Any]:
    """The upstream agent's update_job_metrics for the same jobs (submission ids 1..jobs, as the
    jobbergate-sync side), in a fresh process, against a fresh fake API."""
    marks = {number: marks_of(job, tasks, now) for number, job in enumerate(range(FIRST_JOB, FIRST_JOB + jobs), start=1)}
    cache = directory / "upstream-cache"
    shutil.rmtree(cache, ignore_errors=True)
    with MetricsApiServer(marks if steady else {}) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        settings = {"BASE_API_URL": f"http://127.0.0.1:{server.server_port}", "INFLUX_DSN": influx_dsn(url, database),
                    "CACHE_DIR": str(cache)}
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
                       **{f"JOBBERGATE_AGENT_{key}": value for key, value in settings.items()}}
        # its settings also read .env in the working directory: an empty directory of ours
        began = time.perf_counter()
        result = subprocess.run([str(python), str(UPSTREAM_DRIVER), "1", str(FIRST_JOB), str(jobs)], env=environment,
                                cwd=directory, capture_output=True, text=True)
        process_seconds = time.perf_counter() - began
        server.shutdown()
    if result.returncode != 0 or not result.stdout.strip():
        raise SystemExit(f"the upstream agent's driver failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    counts = server.counts
    return {**figures, "code": 0 if figures["failed"] == 0 and counts["refused"] == 0 else 1,
            "marks_gets": counts["marks_gets"], "puts": counts["puts"], "put_kb": round(counts["put_bytes"] / 1024),
            "rows": counts["rows"], "influx_kb": round(figures["influx_bytes"] / 1024), "phase_seconds": figures["seconds"],
            "errors": result.stderr.count("ERROR"), "process_seconds": round(process_seconds, 2)}


COLUMNS = (("jobs", 6), ("pass", 6), ("fill s", 7), ("tool", 8), ("influx req", 10), ("influx KB", 10), ("API GET", 8),
           ("API PUT", 8), ("PUT KB", 8), ("rows", 8), ("proc s", 7), ("wall s", 7), ("phase s", 7), ("peak MB", 8),
           ("wall/up", 8), ("phase/up", 8))


def table_row(size: int, steady: bool, filled: float, tool: str, figures: dict[str, Any],
              upstream: Optional[dict[str, Any]] = None) -> str:
    """One tool's pass; with `upstream`, the ratios of this pass's wall time and metrics phase to the upstream agent's."""
    ratios = [f"{figures[key] / upstream['seconds']:.3f}" if upstream and upstream["seconds"] else ""
              for key in ("seconds", "phase_seconds")]
    cells = [size, "steady" if steady else "first", f"{filled:.1f}", tool] + [figures[key] for key in (
        "influx_requests", "influx_kb", "marks_gets", "puts", "put_kb", "rows", "process_seconds", "seconds",
        "phase_seconds", "peak_mb")] + ratios
    outcome = "" if figures["code"] == 0 else f"  exit {figures['code']}" if tool == "sync" else \
        f"  {figures['failed']} failed, {figures['errors']} ERROR log lines"
    return " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS)).rstrip() + outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--influxdb-url", default=os.environ.get("JGS_INFLUXDB_URL", "http://127.0.0.1:8086"))
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--first-max", type=int, default=100, help="the largest size whose first pass is run")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--span", type=int, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    parser.add_argument("--upstream", action="store_true", help=f"also run the upstream agent ({UPSTREAM_PACKAGE})")
    parser.add_argument("--upstream-venv", type=Path, default=Path("/var/tmp/jobbergate-sync-bench/upstream-venv"),
                        help="the upstream agent's virtualenv, made on first use")
    arguments = parser.parse_args()
    url = arguments.influxdb_url.rstrip("/")
    now = int(time.time())
    python = upstream_python(arguments.upstream_venv) if arguments.upstream else None
    provenance.print_header()
    print(f"# job metrics per pass: {arguments.tasks} tasks a job, a sample every {arguments.interval} s over "
          f"{arguments.span} s, InfluxDB {url}")
    if python:
        print(f"# upstream: {UPSTREAM_PACKAGE} in its own virtualenv, update_job_metrics for each job in turn; "
              "API over loopback HTTP, OIDC token stubbed in-process, log at INFO, numba compiled before the clock")
    print(" ".join(f"{name:>{width}}" for name, width in COLUMNS))
    for size in [int(size) for size in arguments.sizes.split(",") if size]:
        database = f"jgs_bench_metrics_{size}"
        directory = Path(tempfile.mkdtemp(prefix="jgs-bench-metrics-"))
        try:
            filled = fill(url, database, size, arguments.tasks, arguments.interval, arguments.span, now)
            for steady in ([False] if size <= arguments.first_max else []) + [True]:
                figures = sync_pass(directory, url, database, size, arguments.tasks, now, steady)
                upstream = upstream_pass(python, directory, url, database, size, arguments.tasks, now, steady) if python else None
                alone = influxdb_alone(url, database, size, arguments.tasks, now, steady)
                print(table_row(size, steady, filled, "sync", figures, upstream), flush=True)
                floor = f", {alone / upstream['seconds']:.3f} of the upstream wall" if upstream else ""
                print(f"{'':>22} InfluxDB alone answers the same queries in {alone:.2f} s{floor}", flush=True)
                if upstream:
                    print(table_row(size, steady, filled, "upstream", upstream), flush=True)
                    print(f"{'':>22} upstream: {upstream['api_seconds']} s of its wall in API requests, "
                          f"{upstream['compile_seconds']} s numba compile before the clock, its pass added "
                          f"{upstream['pass_mb']} MB to its peak", flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            if not arguments.keep:
                requests.post(f"{url}/query", params={"q": f"DROP DATABASE {database}"}, timeout=60)


if __name__ == "__main__":
    main()
