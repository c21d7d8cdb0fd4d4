"""Job metrics: profile samples from InfluxDB (a fake /query) to the API's agent/metrics routes."""

from __future__ import annotations

import base64
import re
import sqlite3
import sys
from pathlib import Path

import pytest

import jobbergate_sync
from config_files import write_secret
from fakes import INFLUXDB, FakeInfluxDB, check_lines, run
from jobbergate_sync import (
    METRICS_LOOKBACK,
    METRICS_ROWS_PER_UPLOAD,
    PROFILE_MEASUREMENTS,
    ConfigError,
    MetricsJob,
    Rejection,
    build_job_request,
    profile_queries,
)

NOW = 1_700_000_000


@pytest.fixture
def influx(stack) -> FakeInfluxDB:
    return FakeInfluxDB(stack.rsps)


@pytest.fixture
def metrics_config(config_file):
    return lambda **overrides: config_file(**{"influxdb.url": INFLUXDB, **overrides})


def running(stack, submission_id: int, job_id: int, state: str = "RUNNING") -> dict:
    stack.api.add_submission(submission_id, status="SUBMITTED", slurm_job_id=job_id)
    return stack.slurm.add_job(job_id, state)


def stored(stack, submission_id: int) -> dict:
    """The API's rows of a submission: (time, host, step, task) -> RSS."""
    return {key[1:]: row[10] for key, row in stack.api.metrics.items() if key[0] == submission_id}


def influxdb_failures(textfile: Path) -> int:
    """The textfile's jobbergate_sync_last_run_influxdb_failures."""
    [value] = re.findall(r"^jobbergate_sync_last_run_influxdb_failures (\d+)$", textfile.read_text(), re.M)
    return int(value)


def journal_marks(tmp_path: Path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        return db.execute("SELECT submission_id, node_host, step, task, max_time FROM metric_marks ORDER BY 1, 2, 3, 4"
                          ).fetchall()


# ---------------------------------------------------------------------------------------------
# Queries: their number does not grow with the jobs
# ---------------------------------------------------------------------------------------------


def test_one_query_for_hundreds_of_jobs_and_each_job_in_exactly_one_query() -> None:
    jobs = [MetricsJob(n, 1000 + n, {("c1", 0, 0): NOW - n % 15}) for n in range(500)]
    [query] = profile_queries(jobs)
    assert sorted(query.since) == [job.slurm_job_id for job in jobs]
    assert query.text.count("SELECT") == 2  # their windows start close together: one statement, and the discovery
    split = profile_queries(jobs, url_bytes=1500)
    assert len(split) > 1
    assert sorted(job_id for query in split for job_id in query.since) == [job.slurm_job_id for job in jobs]
    assert all(len(jobbergate_sync.urllib.parse.quote(query.text)) <= 1500 for query in split)


@pytest.mark.parametrize("parts", [1, 4, 32])
def test_jobs_met_for_the_first_time_are_read_a_few_at_a_time(parts: int) -> None:
    at_once = jobbergate_sync.NEW_JOBS_READ_AT_ONCE
    new = [MetricsJob(n, 2000 + n, {}) for n in range(2 * at_once + 1)]
    followed = [MetricsJob(n, 3000 + n, {("c1", 0, 0): NOW}) for n in range(100)]
    queries = profile_queries(new + followed, parts=parts)
    assert sorted(job_id for query in queries for job_id in query.since) == sorted(job.slurm_job_id for job in new + followed)
    new_per_query = [sum(since is None for since in query.since.values()) for query in queries]
    # as many of them read at a time (parts queries side by side) as with one part
    assert max(new_per_query) * min(parts, len(queries)) <= max(at_once, parts)
    assert len(queries) <= -(-len(new) // jobbergate_sync.new_jobs_per_query(parts)) + parts


@pytest.mark.parametrize("jobs", [4, 30, 400])
def test_followed_jobs_are_read_in_as_many_queries_as_workers(jobs: int) -> None:
    followed = [MetricsJob(n, 3000 + n, {("c1", 0, 0): NOW - n % 7}) for n in range(jobs)]
    queries = profile_queries(followed, parts=4)
    assert len(queries) == 4
    assert sorted(job_id for query in queries for job_id in query.since) == [job.slurm_job_id for job in followed]
    assert max(len(query.since) for query in queries) == -(-jobs // 4)


def test_new_jobs_read_their_whole_profile_followed_jobs_from_their_oldest_live_mark() -> None:
    followed = MetricsJob(1, 101, {("c1", 0, 0): NOW, ("c1", 1, 0): NOW - 100, ("c1", 2, 0): NOW - METRICS_LOOKBACK - 1})
    new = MetricsJob(2, 102, {})
    [query] = profile_queries([followed, new])
    whole, recent, discovery = query.text.split(";")
    assert "/^(102)$/" in whole and "time >" not in whole
    start = jobbergate_sync.bucket_start(NOW - 100)  # step 2 fell silent long ago: it holds nothing back
    assert "/^(101)$/" in recent and f"time > {start}s" in recent
    assert discovery.startswith('SELECT first("value")') and "/^(101)$/" in discovery
    assert f"time > {jobbergate_sync.bucket_start(NOW - METRICS_LOOKBACK)}s" in discovery
    assert query.since == {101: start, 102: None} and query.discovery == 2


# ---------------------------------------------------------------------------------------------
# Passes
# ---------------------------------------------------------------------------------------------


def test_a_running_job_s_samples_reach_the_api_once_and_new_series_are_picked_up(stack, influx, metrics_config,
                                                                                 tmp_path) -> None:
    running(stack, 1, 101)
    for offset in range(0, 50, 10):
        influx.sample(101, NOW + offset, RSS=2048.0 + offset, CPUTime=offset, CPUFrequency=2000)
    config = metrics_config()
    assert run(config) == 0
    assert stored(stack, 1) == {(NOW + offset, "c1", 0, 0): 2048 + offset for offset in range(0, 50, 10)}
    assert len(stack.api.called("metrics_marks")) == 1  # no mark known yet: asked once
    row = stack.api.metrics[(1, NOW, "c1", 0, 0)]
    assert row[4] == 2000.0 and row[5] == 0.0 and row[10] == 2048  # CPUFrequency, CPUTime, RSS in the API's order

    # a new step, and the next sample of the first
    for offset in (60, 70):
        influx.sample(101, NOW + offset, step=1, RSS=100.0, CPUTime=1.0)
    influx.sample(101, NOW + 50, RSS=4096.0, CPUTime=1.0)
    assert run(config) == 0
    assert {key for key in stored(stack, 1) if key[2] == 1} == {(NOW + 60, "c1", 1, 0), (NOW + 70, "c1", 1, 0)}
    assert stored(stack, 1)[(NOW + 50, "c1", 0, 0)] == 4096
    assert len(stack.api.called("metrics_marks")) == 1  # the journal's marks from then on
    assert journal_marks(tmp_path) == [(1, "c1", 0, 0, NOW + 50), (1, "c1", 1, 0, NOW + 70)]

    # a host whose first buffer arrives very late: older than where this pass reads from
    late = [NOW - 400 + 10 * n for n in range(50)]
    for sample_time in late:
        influx.sample(101, sample_time, host="c2", RSS=7.0, CPUTime=1.0)
    assert run(config) == 0
    assert not [key for key in stored(stack, 1) if key[1] == "c2"]  # marked just before its first sample...
    assert (1, "c2", 0, 0, NOW - 401) in journal_marks(tmp_path)
    assert run(config) == 0  # ...and read from there by the next pass
    assert sorted(key[0] for key in stored(stack, 1) if key[1] == "c2") == late

    puts = len(stack.api.metrics_puts)
    assert run(config) == 0  # nothing new: nothing sent, no duplicate refused
    assert len(stack.api.metrics_puts) == puts


@pytest.mark.parametrize("workers", [1, 4])
def test_one_request_to_influxdb_per_worker_and_pass_for_many_followed_jobs(stack, influx, metrics_config,
                                                                            workers: int) -> None:
    for number in range(1, 31):
        running(stack, number, 100 + number)
        influx.sample(100 + number, NOW, RSS=1.0, CPUTime=1.0)
    config = metrics_config(**{"run.workers": str(workers)})
    assert run(config) == 0  # met for the first time: read whole, a few jobs a request
    assert len(influx.queries) == -(-30 // jobbergate_sync.new_jobs_per_query(workers))
    for number in range(1, 31):
        influx.sample(100 + number, NOW + 10, RSS=2.0, CPUTime=1.0)
    del influx.queries[:]
    assert run(config) == 0
    assert len(influx.queries) == workers
    assert len(stack.api.metrics) == 60


@pytest.mark.parametrize("owner", ["root", "someone-else"])
def test_the_metrics_of_a_job_that_is_not_the_owner_s_are_never_read(stack, influx, metrics_config, owner) -> None:
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=555)  # any user may name any job id
    stack.slurm.add_job(555, "RUNNING", user=owner)
    influx.sample(555, NOW, RSS=123.0)
    config = metrics_config()
    for _ in range(2):  # the pass that ends the submission, and the one after it
        run(config)
    assert stack.api.metrics == {} and stack.api.called("metrics_marks") == [] and influx.queries == []


def test_metrics_follow_a_job_unchanged_since_its_owner_was_checked(stack, influx, metrics_config) -> None:
    running(stack, 1, 101)
    config = metrics_config(**{"influxdb.url": ""})
    assert run(config) == 0  # RUNNING reported before job metrics were turned on
    influx.sample(101, NOW, RSS=1.0)
    assert run(metrics_config()) == 0  # the same state: no full read, and its report was owner-checked
    assert sorted(stored(stack, 1)) == [(NOW, "c1", 0, 0)]


def test_a_pending_job_is_not_read(stack, influx, metrics_config) -> None:
    running(stack, 1, 101, state="PENDING")
    config = metrics_config()
    assert run(config) == 0
    assert influx.queries == [] and stack.api.called("metrics_marks") == []


def test_a_long_profile_goes_up_in_time_ordered_chunks_of_at_most_2340_rows(stack, influx, metrics_config) -> None:
    running(stack, 1, 101)
    for second in range(2500):
        for task in (0, 1):
            influx.sample(101, NOW + second, task=task, RSS=float(second))
    assert run(metrics_config()) == 0
    assert [rows for _, rows in stack.api.metrics_puts] == [METRICS_ROWS_PER_UPLOAD, METRICS_ROWS_PER_UPLOAD,
                                                            5000 - 2 * METRICS_ROWS_PER_UPLOAD]
    assert len(stored(stack, 1)) == 5000


def test_a_chunk_resent_after_a_crash_is_no_failure(stack, influx, metrics_config, tmp_path) -> None:
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    config = metrics_config()
    assert run(config) == 0
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:  # the upload landed, its mark did not
        db.execute("DELETE FROM metric_marks")
    influx.sample(101, NOW + 10, RSS=2.0)
    assert run(config) == 0  # the chunk holding NOW again is refused as a duplicate; the new row goes up alone
    assert journal_marks(tmp_path) == [(1, "c1", 0, 0, NOW + 10)]
    assert sorted(stored(stack, 1)) == [(NOW, "c1", 0, 0), (NOW + 10, "c1", 0, 0)]
    assert stack.api.metrics_puts == [(1, 1), (1, 1)]


def test_a_pass_ended_by_an_upload_still_writes_the_marks_of_what_went_up(stack, influx, metrics_config,
                                                                         tmp_path) -> None:
    for number in (1, 2):
        running(stack, number, 100 + number)
        influx.sample(100 + number, NOW, RSS=1.0)
    stack.api.answers["metrics_put"] = [(204, ""), 403]  # the second upload meets a revoked client
    assert run(metrics_config(**{"run.workers": "1"})) == jobbergate_sync.EX_NOPERM
    assert journal_marks(tmp_path) == [(1, "c1", 0, 0, NOW)]


def test_a_refused_upload_that_is_not_a_duplicate_is_an_error(stack, influx, metrics_config) -> None:
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    stack.api.answers["metrics_put"] = [(400, {"detail": "Failed to insert metrics"})]
    assert run(metrics_config()) == 1


def test_an_ended_job_is_collected_once_more_then_forgotten(stack, influx, metrics_config, tmp_path) -> None:
    job = running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    config = metrics_config()
    assert run(config) == 0
    job.update(job_state="COMPLETED")
    influx.sample(101, NOW + 10, RSS=2.0)
    assert run(config) == 0
    assert stack.api.status(1) == "DONE"
    influx.sample(101, NOW + 20, RSS=3.0)  # flushed at the task's end, after that pass read
    assert run(config) == 0  # no longer active: the last collection
    assert sorted(stored(stack, 1)) == [(NOW + offset, "c1", 0, 0) for offset in (0, 10, 20)]
    assert journal_marks(tmp_path) == []
    queries = len(influx.queries)
    assert run(config) == 0
    assert len(influx.queries) == queries  # nothing followed any more


def test_a_submission_gone_from_the_api_is_no_longer_followed(stack, influx, metrics_config, tmp_path) -> None:
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    config = metrics_config()
    assert run(config) == 0
    del stack.api.submissions[1]
    influx.sample(101, NOW + 10, RSS=1.0)
    assert run(config) == 0
    assert journal_marks(tmp_path) == []
    assert run(config) == 0
    assert [name for name, _, _ in stack.api.calls].count("metrics_put") == 2  # not tried again


def test_a_followed_job_that_is_no_longer_the_submission_s_is_dropped(stack, influx, metrics_config, tmp_path) -> None:
    """Jobbergate's database recreated or restored: submission 1 is another submission now, with job 202."""
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    config = metrics_config()
    assert run(config) == 0
    running(stack, 1, 202)
    stack.api.metrics.clear()
    influx.sample(101, NOW + 10, RSS=5.0)
    influx.sample(202, NOW + 10, RSS=2.0)
    assert run(config) == 0
    assert stored(stack, 1) == {(NOW + 10, "c1", 0, 0): 2.0}


def test_influxdb_down_delays_the_metrics_and_nothing_else(stack, influx, metrics_config, tmp_path, capfd) -> None:
    job = running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    influx.down = True
    textfile = tmp_path / "sync.prom"
    config = metrics_config(**{"metrics.textfile": str(textfile)})
    assert run(config) == 0
    assert [body["slurm_job_state"] for body in stack.api.called("update")] == ["RUNNING"]
    assert stack.api.health and stack.api.metrics == {}
    log = capfd.readouterr().err
    assert "InfluxDB" in log and "wait for the next pass" in log and "influxdb_failures=1" in log
    assert influxdb_failures(textfile) == 1
    influx.down = False
    job.update(job_state="RUNNING")
    assert run(config) == 0
    assert sorted(stored(stack, 1)) == [(NOW, "c1", 0, 0)]
    assert influxdb_failures(textfile) == 0


def test_a_dry_run_neither_reads_nor_uploads(stack, influx, metrics_config, tmp_path) -> None:
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    assert run(metrics_config(), "--dry-run") == 0
    assert influx.queries == [] and stack.api.called("metrics_marks") == [] and stack.api.metrics == {}


def test_metrics_off_without_url(stack, influx, config_file) -> None:
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    assert run(config_file()) == 0
    assert influx.queries == [] and stack.api.metrics == {}


# ---------------------------------------------------------------------------------------------
# Configuration and check
# ---------------------------------------------------------------------------------------------


def test_missing_msgpack_names_the_extra(metrics_config, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ConfigError, match=r"jobbergate-sync\[influxdb\]"):
        jobbergate_sync.load_config(metrics_config(), {})


def test_password_file_must_be_private(metrics_config, tmp_path) -> None:
    loose = write_secret(tmp_path / "influx.pw", b"secret\n", mode=0o644)
    with pytest.raises(ConfigError, match="password_file"):
        jobbergate_sync.load_config(metrics_config(**{"influxdb.user": "sync", "influxdb.password_file": loose}), {})
    private = write_secret(tmp_path / "influx.pw2", b"secret\n")
    config = jobbergate_sync.load_config(metrics_config(**{"influxdb.user": "sync", "influxdb.password_file": private}), {})
    assert config.influxdb_password == "secret"


def test_password_sent_as_basic_auth(stack, influx, metrics_config, tmp_path) -> None:
    running(stack, 1, 101)
    influx.sample(101, NOW, RSS=1.0)
    private = write_secret(tmp_path / "influx.pw", b"s3cret\n")
    assert run(metrics_config(**{"influxdb.user": "sync", "influxdb.password_file": private})) == 0
    assert influx.authorizations == ["Basic " + base64.b64encode(b"sync:s3cret").decode()]
    assert stored(stack, 1)


def test_check_shows_the_measurements(stack, influx, metrics_config, capsys) -> None:
    influx.sample(101, NOW, RSS=1.0, CPUTime=2.0)
    code, lines = check_lines(capsys, metrics_config())
    status, detail = lines["InfluxDB"]
    assert status == "ok" and "2 of 10" in detail and "RSS" in detail


def test_check_notes_that_no_job_was_profiled(stack, influx, metrics_config, capsys) -> None:
    code, lines = check_lines(capsys, metrics_config())
    status, detail = lines["InfluxDB"]
    assert status == "ok" and "no job has been profiled" in detail and "ProfileInfluxDBDefault" in detail


def test_check_fails_on_a_missing_database(stack, influx, metrics_config, capsys) -> None:
    code, lines = check_lines(capsys, metrics_config(**{"influxdb.database": "nosuch"}))
    status, detail = lines["InfluxDB"]
    assert status == "FAIL" and "nosuch" in detail and code == jobbergate_sync.EX_CONFIG


def test_check_fails_when_influxdb_is_down(stack, influx, metrics_config, capsys) -> None:
    influx.down = True
    code, lines = check_lines(capsys, metrics_config())
    assert lines["InfluxDB"][0] == "FAIL" and code == jobbergate_sync.EX_UNAVAILABLE


# ---------------------------------------------------------------------------------------------
# Journal
# ---------------------------------------------------------------------------------------------


def test_a_version_2_journal_gains_the_metrics_tables(tmp_path) -> None:
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(jobbergate_sync.JOURNAL_SCHEMA)
        db.execute("INSERT INTO submissions (submission_id, tag, created_at) VALUES (7, 't', 1)")
        db.execute("PRAGMA user_version = 2")
    path.chmod(0o600)
    journal = jobbergate_sync.Journal(str(path))
    journal.follow_metrics(MetricsJob(7, 107, {("c1", -5, 0): NOW}))
    journal.write_metric_marks({7: {("c1", -5, 0): NOW - 10, ("c2", 0, 1): NOW}}, set())  # never lowered
    assert journal.metric_jobs() == {7: MetricsJob(7, 107, {("c1", -5, 0): NOW, ("c2", 0, 1): NOW})}
    assert journal.get(7) is not None
    assert journal.db.execute("PRAGMA user_version").fetchone()[0] == jobbergate_sync.JOURNAL_VERSION
    journal.follow_metrics(MetricsJob(8, 108, {}))
    journal.write_metric_marks({7: {("c1", -5, 0): NOW + 10}, 8: {("c1", 0, 0): NOW}}, {7})  # raised, then forgotten
    assert journal.metric_jobs() == {8: MetricsJob(8, 108, {("c1", 0, 0): NOW})}


# ---------------------------------------------------------------------------------------------
# --profile and --acctg-freq, per API version
# ---------------------------------------------------------------------------------------------

PROFILE_JOB_FIELDS = {
    38: {"profile": "task", "account_gather_frequency": "task=5"},
    **{minor: {"profile": ["TASK"], "account_gather_frequency": "task=5"} for minor in range(39, 45)},
}


@pytest.mark.parametrize("minor", sorted(PROFILE_JOB_FIELDS))
def test_profile_and_acctg_freq_fields_per_version(minor: int) -> None:
    script = "#!/bin/bash\n#SBATCH --profile=task\necho hi\n"
    job = build_job_request(script, ["--acctg-freq=task=5"], "n", "/home/alice", {"PATH": "/bin"}, "t", minor).payload["job"]
    assert {key: job[key] for key in PROFILE_JOB_FIELDS[minor]} == PROFILE_JOB_FIELDS[minor]


@pytest.mark.parametrize(("value", "minor", "expected"), [
    ("all", 38, "all"), ("All", 44, ["ENERGY", "LUSTRE", "NETWORK", "TASK"]), ("none", 41, ["NONE"]),
    ("task,energy", 40, ["TASK", "ENERGY"]), ("Task,Network", 38, "task,network"),
])
def test_profile_names(value: str, minor: int, expected) -> None:
    assert jobbergate_sync.translate_profile(value, minor) == {"profile": expected}


@pytest.mark.parametrize("value", ["cpu", "all,task", "", "task,,bogus"])
def test_profile_refusals(value: str) -> None:
    with pytest.raises(Rejection, match="--profile"):
        jobbergate_sync.translate_profile(value, 42)


@pytest.mark.parametrize(("value", "ok"), [("30", True), ("task=30", True), ("task=5,energy=60", True),
                                           ("Task=5", True), ("task", False), ("cpu=5", False), ("5s", False)])
def test_acctg_freq(value: str, ok: bool) -> None:
    if ok:
        assert jobbergate_sync.translate_acctg_freq(value, 39) == {"account_gather_frequency": value.lower()}
    else:
        with pytest.raises(Rejection, match="--acctg-freq"):
            jobbergate_sync.translate_acctg_freq(value, 39)


def test_all_ten_measurements_in_the_api_order() -> None:
    assert PROFILE_MEASUREMENTS == ("CPUFrequency", "CPUTime", "CPUUtilization", "GPUMemMB", "GPUUtilization", "Pages",
                                    "RSS", "ReadMB", "VMSize", "WriteMB")
