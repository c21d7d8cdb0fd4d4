"""Two head nodes: a pass runs only on the host whose slurmctld is in charge, and the host that takes
over settles every CREATED submission against Slurm (one read) before submitting any.

Ping answers are the ones recorded from each Slurm (one controller, "vm"); the two-controller answers
are made from them as Slurm's source makes them (the entry of each SlurmctldHost in turn: v0.0.38
`_op_handler_ping`, data_parser CONTROLLER_PING from v0.0.40), since the stack runs one controller.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

import jobbergate_sync
from fakes import FIXTURES, capture, check_lines, journal_rows, ping_of_controllers, run, slurm_of, tag
from jobbergate_sync import Controller, CrashPoint, controllers_from_ping, controllers_from_scontrol

PING_CAPTURES = sorted(path.name for path in FIXTURES.glob("v0.0.*_ping_*.json"))
SCONTROL_CAPTURES = sorted((FIXTURES.parent / "sbatch").glob("*/scontrol_ping.json"))


# A pass on the other head node ends within [run] deadline and two Slurm exchanges: 1.2 s here.
QUICK = {"run.deadline": 1, "slurmrestd.timeout": 0.1}
TAKEOVER_WAIT = 1.3


def fake_slurm(stack: Any, capture_name: str) -> Any:
    """The fake slurmrestd serving the version of that capture."""
    version = capture_name.split("_")[0]
    return stack.slurm if version == stack.slurm.version else slurm_of(stack, version)


def ping_answer(capture_name: str, up: tuple[bool, ...], names: tuple[str, ...] = ("head1", "head2")) -> dict[str, Any]:
    """The recorded answer of that version, listing `names` in SlurmctldHost order, each UP or DOWN."""
    return ping_of_controllers(capture(capture_name)["response"], dict(zip(names, up)))


def answer_ping(slurm: Any, body: Any, status: int = 200) -> None:
    """Every later GET ping of this fake slurmrestd answers `body`."""
    slurm._ping = lambda request, user, _: (status, {"Content-Type": "application/json"}, json.dumps(body))


def host_config(config_file: Any, tmp_path: Path, name: str, **settings: Any) -> str:
    """The configuration of the tool on head node `name`: its own state directory and lock."""
    path = Path(config_file(**{"run.host_names": name, "run.state_dir": str(tmp_path / name / "state"),
                               "run.lock_file": str(tmp_path / name / "lock"), **QUICK, **settings}))
    return str(path.rename(tmp_path / f"{name}.ini"))


def settled_active(tmp_path: Path, name: str) -> None:
    """Head node `name` was in charge at its last pass, a moment ago, and had settled."""
    state = tmp_path / name / "state"
    state.mkdir(parents=True, mode=0o700)
    jobbergate_sync.Journal(str(state / "journal.sqlite3"))
    (state / jobbergate_sync.ROLE_FILE).write_text(json.dumps(
        {"role": "active", "settled": True, "since": time.time() - 600, "at": time.time(), "controllers": ["head1", "head2"]}))


def summary(capsys: Any) -> dict[str, Any]:
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return next(line for line in reversed(lines) if line["message"].startswith("pass finished"))


def api_requests(stack: Any) -> list[Any]:
    return stack.api.calls + stack.issuer.issued


# --------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_every_recorded_ping_answer_lists_its_one_controller(name):
    assert controllers_from_ping(capture(name)["response"]) == [Controller("vm", "primary", True)]


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_two_controllers_are_read_in_slurmctldhost_order_with_their_state(name):
    body = ping_answer(name, (False, True))
    assert controllers_from_ping(body) == [Controller("head1", "primary", False), Controller("head2", "backup", True)]


def test_v0_0_39_which_no_leg_serves_reads_as_v0_0_40():
    """v0.0.39 (Slurm 23.02 to 24.05) dumps the fields of v0.0.40: hostname, pinged, latency, mode
    (data_parser/v0.0.39/parsers.c, CONTROLLER_PING, at slurm-23-02-8-1)."""
    body = {"pings": [{"hostname": "head1", "pinged": "DOWN", "latency": 10000000, "mode": "primary"},
                      {"hostname": "head2", "pinged": "UP", "latency": 1015, "mode": "backup"}],
            "meta": {"plugin": {"data_parser": "data_parser/v0.0.39"}}, "errors": [], "warnings": []}
    assert controllers_from_ping(body) == [Controller("head1", "primary", False), Controller("head2", "backup", True)]


def test_responding_decides_over_the_deprecated_pinged_text():
    body = ping_answer("v0.0.44_ping_25.11.7.json", (True,), ("head1",))
    body["pings"][0].update(responding=False, pinged="UP")
    assert controllers_from_ping(body)[0].responding is False


@pytest.mark.parametrize("path", SCONTROL_CAPTURES, ids=lambda path: path.parent.name)
def test_every_recorded_scontrol_ping_lists_its_one_controller(path):
    assert controllers_from_scontrol(json.loads(path.read_text())["stdout"]) == [Controller("vm", "primary", True)]


def test_scontrol_ping_of_two_controllers_as_root_with_its_banner():
    # _print_ping in scontrol.c: one line per SlurmctldHost, then (as root, one being down) a banner
    text = ("Slurmctld(primary) at head1 is DOWN\nSlurmctld(backup) at head2 is UP\n"
            "*****************************************\n** RESTORE SLURMCTLD DAEMON TO SERVICE **\n"
            "*****************************************\n")
    assert controllers_from_scontrol(text) == [Controller("head1", "primary", False), Controller("head2", "backup", True)]


def test_this_host_is_known_by_its_hostname_fqdn_short_name_and_aliases(monkeypatch):
    monkeypatch.setattr(jobbergate_sync.socket, "gethostname", lambda: "Head1.cluster.example")
    monkeypatch.setattr(jobbergate_sync.socket, "getfqdn", lambda: "head1.cluster.example")
    names = jobbergate_sync.local_host_names("head1-ib, ctl-a")
    assert {"head1", "head1.cluster.example", "head1-ib", "ctl-a"} <= names
    assert jobbergate_sync.is_this_host("HEAD1", names) and jobbergate_sync.is_this_host("ctl-a.ib.example", names)
    assert not jobbergate_sync.is_this_host("head2", names)


# --------------------------------------------------------------------------- the role of a pass


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_the_host_of_the_primary_in_charge_submits(stack, config_file, email, tmp_path, name):
    slurm = fake_slurm(stack, name)
    answer_ping(slurm, ping_answer(name, (True, True)))
    stack.api.add_submission(1, email=email)
    settled_active(tmp_path, "head1")

    assert run(host_config(config_file, tmp_path, "head1")) == 0

    assert stack.api.status(1) == "SUBMITTED" and len(slurm.submitted) == 1


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_the_other_host_stands_by_without_asking_the_api(stack, config_file, email, tmp_path, capsys, name):
    slurm = fake_slurm(stack, name)
    answer_ping(slurm, ping_answer(name, (True, True)))
    stack.api.add_submission(1, email=email)

    assert run(host_config(config_file, tmp_path, "head2")) == 0

    line = summary(capsys)
    assert "standby" in line["message"] and "head1" in line["message"] and line["exit_code"] == 0
    assert api_requests(stack) == [] and slurm.submitted == [] and stack.api.status(1) == "CREATED"
    assert not (tmp_path / "head2" / "state" / "journal.sqlite3").exists()


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_with_the_primary_down_the_backup_host_takes_over(stack, config_file, email, tmp_path, capsys, name):
    slurm = fake_slurm(stack, name)
    answer_ping(slurm, ping_answer(name, (False, True)))
    stack.api.add_submission(1, email=email)
    backup = host_config(config_file, tmp_path, "head2")
    primary = host_config(config_file, tmp_path, "head1")

    assert run(primary) == 0 and "standby" in summary(capsys)["message"]
    assert run(backup) == 0  # it has just taken over: passes started on head1 may still be under way
    assert "end by" in summary(capsys)["message"] and slurm.submitted == []
    time.sleep(TAKEOVER_WAIT)
    assert run(backup) == 0

    assert stack.api.status(1) == "SUBMITTED" and len(slurm.submitted) == 1


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_both_controllers_down_is_69_without_asking_the_api(stack, config_file, email, tmp_path, name):
    slurm = fake_slurm(stack, name)
    answer_ping(slurm, ping_answer(name, (False, False)))
    stack.api.add_submission(1, email=email)

    assert run(host_config(config_file, tmp_path, "head1")) == jobbergate_sync.EX_UNAVAILABLE

    assert api_requests(stack) == [] and slurm.submitted == []


def test_both_controllers_down_on_22_05_is_an_error_answer_and_still_69(stack, config_file, email, tmp_path):
    """22.05's ping first loads slurmctld's configuration: with no controller answering, an error."""
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (True, True)))
    config = host_config(config_file, tmp_path, "head1")
    assert run(config) == 0
    stack.api.add_submission(1, email=email)
    calls = len(stack.api.calls)
    answer_ping(stack.slurm, {"errors": [{"description": "slurmctld config is unable to load", "error_number": 1800,
                                          "error": "Unable to contact slurm controller (connect failure)",
                                          "source": "slurm_load_ctl_conf"}], "pings": []}, status=500)

    assert run(config) == jobbergate_sync.EX_UNAVAILABLE

    assert len(stack.api.calls) == calls and stack.slurm.submitted == []


@pytest.mark.parametrize("name", PING_CAPTURES)
def test_a_host_that_is_no_controller_is_a_configuration_error_naming_host_names(stack, config_file, email, tmp_path,
                                                                                 capsys, name):
    slurm = fake_slurm(stack, name)
    answer_ping(slurm, ping_answer(name, (True, True)))
    stack.api.add_submission(1, email=email)

    assert run(host_config(config_file, tmp_path, "login1")) == jobbergate_sync.EX_CONFIG

    assert "[run] host_names" in capsys.readouterr().err
    assert api_requests(stack) == [] and slurm.submitted == []


def test_always_runs_the_pass_whichever_controller_is_in_charge(stack, config_file, email, tmp_path):
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (True, True)))
    stack.api.add_submission(1, email=email)

    assert run(host_config(config_file, tmp_path, "login1", **{"run.role": "always"})) == 0

    assert stack.api.status(1) == "SUBMITTED"
    assert not [url for _, url, _ in stack.slurm.requests if url.endswith("/ping")]


def test_role_must_be_auto_or_always(stack, config_file, capsys):
    assert run(config_file(**{"run.role": "sometimes"})) == jobbergate_sync.EX_CONFIG
    assert "[run] role" in capsys.readouterr().err


# ----------------------------------------------------------------------- failover without a journal


def take_over(stack: Any, config_file: Any, tmp_path: Path, **settings: Any) -> str:
    """head2's tool has stood by while head1 was in charge; then head1's slurmctld stops answering
    and head2 is in charge, past the wait for head1's last pass."""
    backup = host_config(config_file, tmp_path, "head2", **settings)
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (True, True)))
    assert run(backup) == 0
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (False, True)))
    assert run(backup) == 0  # waits for head1's last pass
    time.sleep(TAKEOVER_WAIT)
    return backup


def test_the_host_taking_over_adopts_the_jobs_the_other_submitted_with_one_read(stack, config_file, email, job_user,
                                                                               tmp_path):
    backup = take_over(stack, config_file, tmp_path)
    for submission_id in range(1, 6):
        stack.api.add_submission(submission_id, email=email)
    for submission_id in (1, 3):  # head1 submitted them, then died before reporting
        stack.slurm.add_job(500 + submission_id, "RUNNING", user=job_user.pw_name, comment=tag(submission_id))
    stack.slurm.requests.clear()

    assert run(backup) == 0

    assert stack.api.submissions[1]["slurm_job_id"] == 501 and stack.api.submissions[3]["slurm_job_id"] == 503
    assert sorted(entry["job"]["comment"] for entry in stack.slurm.submitted) == [tag(i) for i in (2, 4, 5)]
    assert {row[:3] for row in journal_rows(tmp_path / "head2")} >= {(1, 501, 1), (3, 503, 1)}
    before_first_submit = stack.slurm.requests[:next(i for i, r in enumerate(stack.slurm.requests) if r[0] == "POST")]
    assert [url for _, url, _ in before_first_submit if "/job" in url] == ["http://slurm.test:6820/slurm/v0.0.38/jobs"]
    stack.slurm.requests.clear()
    assert run(backup) == 0  # settled once: the next pass reads nothing to settle
    assert len(stack.slurm.submitted) == 3 and not [url for _, url, _ in stack.slurm.requests if url.endswith("/jobs")
                                                    and "update_time" not in url]


def test_a_purged_job_of_the_other_host_is_adopted_from_slurmdbd(stack, config_file, email, job_user, tmp_path):
    backup = take_over(stack, config_file, tmp_path, **{"slurmrestd.slurmdbd": "true"})
    stack.api.add_submission(1, email=email)
    stack.slurm.add_job(501, "COMPLETED", user=job_user.pw_name, comment=tag(1))
    stack.slurm.purge(501, submitted_at=time.time() - 900)

    assert run(backup) == 0

    assert stack.slurm.submitted == []
    assert stack.api.submissions[1]["slurm_job_id"] == 501 and stack.api.status(1) == "DONE"


def test_a_job_with_the_tag_owned_by_someone_else_is_never_adopted(stack, config_file, email, tmp_path, capsys):
    backup = take_over(stack, config_file, tmp_path)
    stack.api.add_submission(1, email=email)
    stack.slurm.add_job(501, "RUNNING", user="mallory", comment=tag(1))
    capsys.readouterr()

    assert run(backup) == 0

    assert stack.api.submissions[1]["slurm_job_id"] != 501 and len(stack.slurm.submitted) == 1
    assert "belongs to mallory" in capsys.readouterr().err


def test_a_pass_without_a_journal_settles_before_submitting(stack, config_file, email, job_user, tmp_path):
    """One head node, state directory lost: the jobs its earlier passes submitted are adopted."""
    stack.api.add_submission(1, email=email)
    stack.slurm.add_job(501, "PENDING", user=job_user.pw_name, comment=tag(1))

    assert run(config_file()) == 0

    assert stack.slurm.submitted == [] and stack.api.submissions[1]["slurm_job_id"] == 501


@pytest.mark.parametrize("where", ["slurmctld", "slurmdbd"])
def test_the_job_of_an_earlier_jobbergate_database_s_submission_with_the_same_id_is_not_adopted(
        stack, config_file, email, job_user, where):
    """A recreated or restored Jobbergate database hands out ids from 1 again; slurmdbd still holds the
    jobs of the earlier submission 1, tagged with its id and its job script's creation time, or (before
    the tag had one) with its id alone. Neither is this submission's job: it is submitted."""
    config = config_file(**({"slurmrestd.slurmdbd": "true"} if where == "slurmdbd" else {}))
    stack.api.add_submission(1, email=email, script_created_at="2026-12-04T09:15:02.118204Z")
    stack.slurm.add_job(501, "COMPLETED", user=job_user.pw_name, comment=tag(1))  # the earlier database's
    stack.slurm.add_job(502, "COMPLETED", user=job_user.pw_name, comment="jobbergate-sync:test-cluster:1")
    if where == "slurmdbd":
        for job_id in (501, 502):
            stack.slurm.purge(job_id, submitted_at=time.time() - 900)

    assert run(config) == 0

    [submitted] = stack.slurm.submitted
    assert submitted["job"]["comment"] == tag(1, script_created_at="2026-12-04T09:15:02.118204Z")
    assert stack.api.submissions[1]["slurm_job_id"] not in (501, 502)


def test_killed_after_slurm_accepted_the_job_then_the_other_host_takes_over(stack, config_file, email, tmp_path,
                                                                            crash_at):
    stack.api.add_submission(1, email=email)
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (True, True)))
    primary = host_config(config_file, tmp_path, "head1")
    backup = host_config(config_file, tmp_path, "head2")
    settled_active(tmp_path, "head1")
    assert run(backup) == 0
    crash_at(CrashPoint.AFTER_SLURM_SUBMIT, primary)  # head1's pass dies once slurmrestd has accepted the job
    [job_id] = stack.slurm.jobs
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (False, True)))
    assert run(backup) == 0
    time.sleep(TAKEOVER_WAIT)

    assert run(backup) == 0

    assert len(stack.slurm.submitted) == 1 and stack.api.submissions[1]["slurm_job_id"] == job_id
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (True, True)))  # head1 back in charge
    assert run(primary) == 0  # settles its own interrupted submit from its journal: the same job
    assert len(stack.slurm.submitted) == 1 and stack.api.submissions[1]["slurm_job_id"] == job_id


# ---------------------------------------------------------------------------------------- check


def test_check_shows_the_controllers_the_one_in_charge_and_this_hosts_role(stack, config_file, tmp_path, capsys):
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (False, True)))

    code, lines = check_lines(capsys, host_config(config_file, tmp_path, "head1"))

    assert code == 0
    status, detail = lines["head nodes"]
    assert status == "ok" and "head1 (primary, DOWN), head2 (backup, UP)" in detail
    assert "in charge: head2" in detail and "standby" in detail


def test_check_names_host_names_when_this_host_is_no_controller(stack, config_file, tmp_path, capsys):
    answer_ping(stack.slurm, ping_answer("v0.0.38_ping_22.05.8.json", (True, True)))

    code, lines = check_lines(capsys, host_config(config_file, tmp_path, "login1"))

    assert code == jobbergate_sync.EX_CONFIG
    assert lines["head nodes"][0] == "FAIL" and "[run] host_names" in lines["head nodes"][1]


# ------------------------------------------------------------------------------- sbatch backend


@pytest.mark.parametrize("returncode, stdout, outcome", [
    (0, "Slurmctld(primary) at head1 is UP\nSlurmctld(backup) at head2 is UP\n", "active"),
    (0, "Slurmctld(primary) at head1 is DOWN\nSlurmctld(backup) at head2 is UP\n", "standby"),
    (1, "Slurmctld(primary) at head1 is DOWN\nSlurmctld(backup) at head2 is DOWN\n", "69"),
    (1, "", "69"),
])
def test_the_sbatch_backend_asks_scontrol_ping(config_file, returncode, stdout, outcome):
    config = jobbergate_sync.load_config(config_file(**{"slurm.backend": "sbatch", "slurmrestd.jwt_key_file": None}), {})
    calls = []

    def scontrol(argv: list[str], timeout: float, **kwargs: Any) -> jobbergate_sync.CommandResult:
        calls.append(argv)
        return jobbergate_sync.CommandResult(argv, returncode, stdout, "")

    def role() -> str:
        controllers = jobbergate_sync.SlurmCommands(config, run=scontrol).controllers()
        active, _ = jobbergate_sync.role_of_this_host(controllers, lambda: {"head1"})
        return "active" if active else "standby"

    if outcome == "69":
        with pytest.raises(jobbergate_sync.Unavailable):
            role()
    else:
        assert role() == outcome
    assert calls == [["/usr/bin/scontrol", "ping"]]


def test_slurmdbd_is_asked_for_several_owners_with_one_users_parameter_each(stack, config_file):
    slurm = slurm_of(stack, "v0.0.44")
    config = jobbergate_sync.load_config(config_file(**{"slurmrestd.slurmdbd": "true"}), {})
    rest = jobbergate_sync.SlurmRest(config, jobbergate_sync.Http(jobbergate_sync.Deadline(10), 1, 0))

    rest.accounting_jobs_since("alice,bob", time.time() - 60)

    [url] = [url for _, url, _ in slurm.requests if "/slurmdb/" in url]
    assert parse_qs(urlparse(url).query)["users"] == ["alice", "bob"]  # 25.11 refuses "alice,bob": 422, error 2166
