"""Runs the upstream jobbergate-agent's `update_job_metrics` once for each given submission, one after
another as its update cycle does, and prints its figures as one JSON line: wall seconds, peak RSS,
InfluxDB requests and bytes read, seconds spent in API requests, failed submissions.

Run by metrics_benchmark.py --upstream with the upstream agent's own virtualenv, never the project's:

    python upstream_metrics_driver.py FIRST_SUBMISSION_ID FIRST_SLURM_JOB_ID JOBS

The agent reads its settings from JOBBERGATE_AGENT_* environment variables (BASE_API_URL, INFLUX_DSN,
CACHE_DIR). Three things differ from a running agent, all in its favour: its OIDC token acquisition is
replaced by a fixed bearer token (the benchmark's API does not check it), its log is kept at INFO (a
running agent logs DEBUG, several lines per InfluxDB query), and numba's compilation of its
aggregation, which a running agent pays once per process, is done before the clock starts.
"""

import asyncio
import json
import sys
import threading
import time

from peak_memory import peak_rss_mb  # beside this file


def count_influxdb_requests(counts: dict) -> None:
    """Wraps influxdb-python's one HTTP method (every query and SHOW MEASUREMENTS goes through it;
    the agent calls it from several threads)."""
    from influxdb import InfluxDBClient

    lock = threading.Lock()
    request = InfluxDBClient.request

    def counted_request(self, *args, **kwargs):
        response = request(self, *args, **kwargs)
        with lock:
            counts["influx_requests"] += 1
            counts["influx_bytes"] += len(response.content)
        return response

    InfluxDBClient.request = counted_request


def time_api_requests(backend_client, counts: dict) -> None:
    """Adds the seconds each API request takes (loopback HTTP to the benchmark's fake) to counts["api_seconds"]."""
    request = backend_client.request

    async def timed_request(*args, **kwargs):
        began = time.perf_counter()
        try:
            return await request(*args, **kwargs)
        finally:
            counts["api_seconds"] += time.perf_counter() - began

    backend_client.request = timed_request


def compile_aggregation() -> float:
    from jobbergate_agent.utils.compute import aggregate_influx_measures

    began = time.perf_counter()
    aggregate_influx_measures(iter([{"time": 0, "host": "node00", "job": "1", "step": "0", "task": "0", "value": 1.0,
                                     "measurement": "CPUTime"}]))
    return time.perf_counter() - began


async def update_all(submissions: list, counts: dict) -> None:
    from jobbergate_agent.jobbergate.update import update_job_metrics

    for submission in submissions:
        try:
            await update_job_metrics(submission)
        except Exception:  # the agent's job_metrics_strategy logs and goes on with the next submission
            counts["failed"] += 1


def main() -> None:
    first_submission, first_job, jobs = (int(argument) for argument in sys.argv[1:4])
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="INFO")
    from jobbergate_agent.clients.cluster_api import backend_client
    from jobbergate_agent.jobbergate.schemas import ActiveJobSubmission

    def fixed_token(request):
        request.headers["authorization"] = "Bearer benchmark"
        return request

    backend_client.auth = fixed_token
    counts = {"influx_requests": 0, "influx_bytes": 0, "api_seconds": 0.0, "failed": 0}
    compile_seconds = compile_aggregation()
    count_influxdb_requests(counts)
    time_api_requests(backend_client, counts)
    submissions = [ActiveJobSubmission(id=first_submission + offset, status="SUBMITTED", slurm_job_id=first_job + offset)
                   for offset in range(jobs)]
    before = peak_rss_mb()
    began = time.perf_counter()
    asyncio.run(update_all(submissions, counts))
    seconds = time.perf_counter() - began
    peak = peak_rss_mb()
    print(json.dumps({**counts, "api_seconds": round(counts["api_seconds"], 2), "seconds": round(seconds, 2),
                      "compile_seconds": round(compile_seconds, 2), "peak_mb": peak,
                      "pass_mb": round(peak - before, 1)}))


if __name__ == "__main__":
    main()
