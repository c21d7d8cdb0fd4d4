"""Every Slurm-facing scenario on every Slurm of the stack, through every API version its slurmrestd
serves and through its own sbatch ([slurm] backend = sbatch: the tool runs inside the leg's root).

One agent cluster (OIDC client) per Slurm leg and API version, all driven at once: a session
fixture creates each target's submissions, runs passes of each target's tool until everything has
settled, and records what it saw; the tests below then assert on that record, one test id per
target. Only the targets of the selected tests run (``-k sbatch``: the sbatch backend of each leg).
Running the targets side by side keeps the slow waits (purge from slurmctld, arrays,
cancels) from adding up.

What each job did is read from the real job record with `scontrol show job` inside the leg's root,
the same text on every Slurm version. Options that no job record shows (see UNSHOWN_OPTIONS) are
checked to have been accepted without a warning naming them, or refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

import helpers
from jobbergate_sync import UNKNOWN_EXIT_CODE_REASON
from scenario import new_submission, tag
from tool import Tool

ALICE_ROOT = "/home/alice/jgs-matrix"
SETTLE_TIMEOUT = 360  # seconds for every target's submissions to reach their end
PASS_PAUSE = 2.0

HAPPY_SCRIPT = b"""#!/bin/bash
#SBATCH --job-name=from-the-script
#SBATCH --time=00:05:00
#SBATCH --output=happy-%j.out
source ./helper.sh
echo "user=$(id -un) pwd=$(pwd) greeting=$GREETING"
"""
EXIT3_SCRIPT = b"#!/bin/bash\nexit 3\n"
# Task 0 fails at once, task 1 succeeds later: the submission must end ABORTED naming task 0.
ARRAY_MIXED_SCRIPT = b"""#!/bin/bash
#SBATCH --array=0-1
if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then exit 3; fi
sleep 4
"""
# Task 1 (the array's own id after the split) ends at once; task 0 runs on until the test has seen
# passes while it ran, then writes the file `release`: the submission must stay active until then.
ARRAY_ORDER_SCRIPT = b"""#!/bin/bash
#SBATCH --array=0-1
if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then
    for second in $(seq 300); do [ -e release ] && exit 0; sleep 1; done
    exit 4
fi
"""
SLEEPER_SCRIPT = b"#!/bin/bash\nsleep 600\n"
LIFECYCLE_KINDS = ("happy", "exit3", "array-mixed", "array-order", "cancel", "purge")
FINAL_STATUSES = ("DONE", "ABORTED", "REJECTED")
QUICK_SCRIPT = b"#!/bin/bash\nexit 0\n"
OPTION_SCRIPT = b"#!/bin/bash\nenv > env-$SLURM_JOB_ID.txt\nsleep 2\n"


# ------------------------------------------------------------------------------ the option table

@dataclasses.dataclass(frozen=True)
class OptionRow:
    """One option as a user writes it, and what the job record shows when Slurm honoured it
    (a regular expression on `scontrol show job -o`, or a check of the job's files)."""

    option: str  # the long name, as a refusal must name it
    arguments: Union[tuple[str, ...], Callable[["Target"], tuple[str, ...]]]
    shows: Union[str, Callable[["Target", str, str], bool], None]  # None: no record shows it
    refused_always: bool = False  # the tool must always refuse it

    def words(self, target: "Target") -> list[str]:
        return list(self.arguments(target) if callable(self.arguments) else self.arguments)


def exported_into_job(target: "Target", record: str, directory: str) -> bool:
    job_id = re.search(r"JobId=(\d+)", record).group(1)  # type: ignore[union-attr]
    path = Path(directory) / f"env-{job_id}.txt"
    helpers.wait_for(path.exists, 60, 1, f"{path}")
    return "JGS_EXPORTED=from-sbatch-arguments" in path.read_text().splitlines()


OPTION_ROWS: tuple[OptionRow, ...] = (
    OptionRow("job-name", ("--job-name=opt-name",), r"JobName=opt-name\b"),
    OptionRow("time", ("--time=7",), r"TimeLimit=00:07:00\b"),
    OptionRow("time-min", ("--time=10", "--time-min=3"), r"TimeMin=00:03:00\b"),
    OptionRow("partition", lambda t: (f"--partition={t.leg.partition}",), lambda t, r, d: f"Partition={t.leg.partition} " in r),
    OptionRow("nodes", ("--nodes=1-1",), r"NumNodes=1\b"),
    OptionRow("ntasks", ("--ntasks=2",), r"NumTasks=2\b"),
    OptionRow("cpus-per-task", ("--cpus-per-task=2",), r"CPUs/Task=2\b"),
    OptionRow("ntasks-per-node", ("--ntasks-per-node=2",), r"NtasksPerN:B:S:C=2:"),
    OptionRow("mincpus", ("--mincpus=2",), r"MinCPUsNode=2\b"),
    OptionRow("mem", ("--mem=100",), r"MinMemoryNode=100M\b"),
    OptionRow("mem-per-cpu", ("--mem-per-cpu=50",), r"MinMemoryCPU=50M\b"),
    OptionRow("tmp", ("--tmp=10",), r"MinTmpDiskNode=10M\b"),
    OptionRow("output", ("--output=opt-%j.out",), r"StdOut=\S+/opt-\d+\.out\b"),
    OptionRow("error", ("--error=opt.err",), r"StdErr=\S+/opt\.err\b"),
    OptionRow("input", ("--input=opt.in",), r"StdIn=\S+/opt\.in\b"),
    OptionRow("chdir", ("--chdir=/tmp",), r"WorkDir=/tmp\b"),
    OptionRow("account", ("--account=jobbergate",), r"Account=jobbergate\b"),
    OptionRow("qos", ("--qos=normal",), r"QOS=normal\b"),
    OptionRow("array", ("--array=0-1",), r"ArrayTaskId=\d"),
    OptionRow("dependency", lambda t: (f"--dependency=afterany:{t.blocker}",), r"Dependency=afterany:\d+"),
    OptionRow("comment", ("--comment=opt-comment",), r"Comment=jobbergate-sync:\S+ opt-comment\b"),
    OptionRow("constraint", ("--constraint=jgsfeature",), r"Features=jgsfeature\b"),
    OptionRow("reservation", ("--reservation=jgs-matrix",), r"Reservation=jgs-matrix\b"),
    OptionRow("licenses", ("--licenses=jgslicense:1",), r"Licenses=jgslicense(:1)?\b"),
    OptionRow("wckey", ("--wckey=jgswckey",), None),  # slurmctld keeps it only with TrackWCKey=yes
    OptionRow("nodelist", lambda t: (f"--nodelist={t.leg.node}",), lambda t, r, d: f"ReqNodeList={t.leg.node}" in r),
    OptionRow("exclude", ("--exclude=jgsspare",), r"ExcNodeList=jgsspare\b"),
    OptionRow("distribution", ("--distribution=cyclic",), None),
    OptionRow("nice", ("--nice=5",), r"Nice=5\b"),
    OptionRow("mail-type", ("--mail-type=END,FAIL",), r"MailType=END,FAIL\b"),
    OptionRow("mail-type", ("--mail-type=TIME_LIMIT_90",), r"MailType=TIME_LIMIT_90\b"),
    OptionRow("mail-user", ("--mail-user=alice@example.com", "--mail-type=END"), r"MailUser=alice@example\.com\b"),
    OptionRow("exclusive", ("--exclusive=user",), r"OverSubscribe=USER\b"),
    OptionRow("requeue", ("--requeue",), r"Requeue=1\b"),
    OptionRow("no-requeue", ("--no-requeue",), r"Requeue=0\b"),
    OptionRow("hold", ("--hold",), r"Reason=JobHeldUser\b"),
    OptionRow("overcommit", ("--overcommit", "--ntasks=4"), r"NumCPUs=1 NumTasks=4\b"),
    OptionRow("contiguous", ("--contiguous",), r"Contiguous=1\b"),
    OptionRow("threads-per-core", ("--threads-per-core=1",), r"ReqB:S:C:T=\d+:\d+:\S+:1\b"),
    OptionRow("cores-per-socket", ("--cores-per-socket=1",), r"ReqB:S:C:T=\d+:\d+:1:"),
    OptionRow("sockets-per-node", ("--sockets-per-node=1",), r"Socks/Node=1\b"),
    OptionRow("gres", ("--gres=gpu:1",), r"TresPerNode=gres[:/]gpu:1\b"),
    OptionRow("gpus", ("--gpus=1",), r"TresPerJob=gres[:/]gpu:1\b"),
    OptionRow("gpus-per-node", ("--gpus-per-node=1",), r"TresPerNode=gres[:/]gpu:1\b"),
    OptionRow("gpus-per-task", ("--ntasks=1", "--gpus-per-task=1"), r"TresPerTask=gres[:/]gpu[:=]1\b"),  # sbatch 24.11+: gres/gpu=1
    OptionRow("begin", ("--begin=now+1hour",), r"Reason=BeginTime\b"),
    OptionRow("begin", ("--begin=now",), r"JobState=(PENDING|RUNNING|COMPLETING|COMPLETED)\b(?!.*Reason=BeginTime)"),
    OptionRow("begin", ("--begin=tomorrow",), r"Reason=BeginTime\b"),
    OptionRow("signal", ("--signal=USR1@30",), None),
    OptionRow("export", ("--export=JGS_EXPORTED=from-sbatch-arguments",), exported_into_job),
    OptionRow("uid", ("--uid=0",), None, refused_always=True),
    OptionRow("gid", ("--gid=0",), None, refused_always=True),
    OptionRow("export-file", ("--export-file=/etc/shadow",), None, refused_always=True),
    OptionRow("get-user-env", ("--get-user-env",), None, refused_always=True),
    OptionRow("wrap", ("--wrap=id",), None, refused_always=True),
    OptionRow("export", ("--export=ALL",), None, refused_always=True),
)
# Options that no `scontrol show job` of these Slurm versions prints (distribution, signal; wckey
# without TrackWCKey): accepted only when slurmrestd did not warn about them (the tool turns such a
# warning into a refusal by name).
UNSHOWN_OPTIONS = {row.option for row in OPTION_ROWS if row.shows is None and not row.refused_always}

BAD_VALUES = (
    (("--mem=lots",), "--mem"),
    (("--time=forever-ish",), "--time"),
    (("--nodes=two",), "--nodes"),
    (("--partition=no-such-partition",), "Invalid partition name specified"),
)


# ------------------------------------------------------------------------------------ targets

SBATCH = "sbatch"  # the version of a target that goes through sbatch rather than slurmrestd


@dataclasses.dataclass
class Target:
    """One Slurm leg and one API version of it (or its sbatch), with its own agent cluster."""

    leg_name: str
    version: str
    leg: Any = None
    blocker: int = 0  # a long job of alice's that dependency rows wait for

    @property
    def id(self) -> str:
        return f"slurm{self.leg_name}-{self.version}"

    @property
    def client(self) -> str:
        if self.version == SBATCH:
            return f"matrix-{self.leg_name}-{SBATCH}"
        return f"matrix-{self.leg_name}-v{int(self.version.rsplit('.', 1)[1])}"

    @property
    def tool_settings(self) -> dict[str, Any]:
        if self.version == SBATCH:
            return {"leg": self.leg_name, "backend": SBATCH}
        return {"leg": self.leg_name, "slurmrestd__api_version": self.version}

    @property
    def directory(self) -> str:
        return f"{ALICE_ROOT}/{self.id}"

    def scontrol(self, job_id: int) -> Optional[str]:
        """`scontrol show job -o ID` inside the leg's root; None when slurmctld no longer knows it."""
        proc = helpers.slurm_cli("scontrol", "show", "job", "-o", str(job_id), leg=self.leg_name)
        return proc.stdout if proc.returncode == 0 and "JobId=" in proc.stdout else None


def matrix_targets() -> list[Target]:
    try:
        stack = helpers.get_stack()
    except helpers.StackNotUp:
        return [Target("none", "v0.0.0")]
    return [Target(name, version, leg) for name, leg in stack.legs.items() for version in (*leg.api_versions, SBATCH)]


TARGETS = matrix_targets()


@dataclasses.dataclass
class Tracked:
    """A submission of a target and what the passes saw of it."""

    kind: str
    submission: dict[str, Any]
    row: Optional[OptionRow] = None
    record: Optional[str] = None  # scontrol's text right after the submit
    statuses: list[str] = dataclasses.field(default_factory=list)
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


class TargetRun:
    """Everything one target submits, and the passes that carry it to the end."""

    def __init__(self, target: Target, stack: helpers.Stack, base: Path):
        self.target = target
        self.stack = stack
        overrides = {**target.tool_settings, "run__deadline": 60}
        for client in (target.client, target.client + "-purge"):
            helpers.AgentClient(stack, client).drain()
        self.tool = Tool(base / target.id, stack, target.client, **overrides)
        self.purge_tool = Tool(base / (target.id + "-purge"), stack, target.client + "-purge", **overrides)
        self.tracked: list[Tracked] = []
        self.results: list[Any] = []

    def add(self, alice: Any, kind: str, files: dict[str, bytes], arguments: Optional[list[str]] = None,
            client: Optional[str] = None, row: Optional[OptionRow] = None) -> Tracked:
        directory = f"{self.target.directory}/{kind}-{len(self.tracked)}"
        sub = new_submission(alice, files, sbatch_arguments=arguments, execution_directory=directory,
                             client_id=client or self.target.client)
        item = Tracked(kind, sub, row)
        item.notes["directory"] = directory
        self.tracked.append(item)
        return item

    def of_kind(self, kind: str) -> list[Tracked]:
        return [item for item in self.tracked if item.kind == kind]

    def one(self, kind: str) -> Tracked:
        (item,) = self.of_kind(kind)
        return item

    def create(self, alice: Any) -> None:
        self.add(alice, "happy", {"job.sh": HAPPY_SCRIPT, "helper.sh": b"GREETING=hello-from-support\n"},
                 ["--job-name=from-the-arguments"])
        self.add(alice, "exit3", {"fail.sh": EXIT3_SCRIPT})
        self.add(alice, "array-mixed", {"array.sh": ARRAY_MIXED_SCRIPT})
        self.add(alice, "array-order", {"array.sh": ARRAY_ORDER_SCRIPT})
        self.add(alice, "cancel", {"sleep.sh": SLEEPER_SCRIPT})
        self.add(alice, "purge", {"quick.sh": QUICK_SCRIPT}, client=self.target.client + "-purge")
        for arguments, _ in BAD_VALUES:
            self.add(alice, "bad", {"job.sh": QUICK_SCRIPT}, list(arguments))
        for row in OPTION_ROWS:
            self.add(alice, "option", {"job.sh": OPTION_SCRIPT}, row.words(self.target), row=row)

    def run(self, tool: Tool) -> None:
        """A pass; its result is kept for the tests (one target's trouble must not stop the others)."""
        self.results.append(tool.run())

    def first_pass(self, alice: Any) -> None:
        self.run(self.tool)
        self.run(self.purge_tool)
        for item in self.tracked:
            current = alice.get_submission(item.submission["id"])
            item.submission = current
            if current.get("slurm_job_id") and item.kind in ("option", "happy"):
                item.record = self.target.scontrol(current["slurm_job_id"])

    def step(self, alice: Any) -> bool:
        """One round: a pass, then the test's own moves (cancel, purge). True when every submission
        followed to its end has got there (option and bad-value rows settle in the first pass)."""
        self.run(self.tool)
        settled = True
        for item in self.tracked:
            if item.kind not in LIFECYCLE_KINDS or item.submission["status"] in FINAL_STATUSES:
                continue
            current = item.submission = alice.get_submission(item.submission["id"])
            item.statuses.append(current["status"])
            if item.kind == "array-order" and current.get("slurm_job_id"):
                seen = item.notes.setdefault("task0_running_while", [])
                seen.append((current["status"], self.array_task_running(current["slurm_job_id"], 0)))
                if sum(running for _, running in seen) >= 2:  # two passes saw task 0 run: let it end
                    Path(item.notes["directory"], "release").touch()
            if item.kind == "cancel" and current.get("slurm_job_state") == "RUNNING" and "cancelled" not in item.notes:
                alice.cancel(current["id"])
                item.notes["cancelled"] = time.time()
            if item.kind == "purge":
                self.step_purge(item)
            settled &= item.submission["status"] in FINAL_STATUSES
        return settled

    def step_purge(self, item: Tracked) -> None:
        """Run the purge cluster's tool only once slurmctld has forgotten the job."""
        job_id = item.submission.get("slurm_job_id")
        if job_id and self.target.scontrol(job_id) is None:
            item.notes["purged"] = True
            self.run(self.purge_tool)

    def array_task_running(self, job_id: int, task: int) -> bool:
        record = self.target.scontrol(job_id) or ""
        array_id = re.search(r"ArrayJobId=(\d+)", record)
        job = array_id.group(1) if array_id else str(job_id)
        proc = helpers.slurm_cli("squeue", "-h", "-r", "-j", job, "-o", "%K %T", leg=self.target.leg_name)
        return any(line.split() == [str(task), "RUNNING"] for line in proc.stdout.splitlines())


def selected_targets(session: pytest.Session) -> list[Target]:
    """The targets some selected test asks about."""
    wanted = {item.callspec.params["target_id"] for item in session.items
              if hasattr(item, "callspec") and "target_id" in item.callspec.params}
    return [target for target in TARGETS if target.id in wanted]


@pytest.fixture(scope="session")
def matrix(request: pytest.FixtureRequest, stack: helpers.Stack, alice: Any,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, TargetRun]:
    """Every selected target's submissions, carried to the end side by side."""
    if TARGETS and TARGETS[0].leg_name == "none":
        pytest.fail(helpers.NOT_UP, pytrace=False)
    base = tmp_path_factory.mktemp("matrix")
    prepare_alice_directories()
    runs = {}
    targets = selected_targets(request.session)
    for target in targets:
        prepare_leg(target)
        runs[target.id] = run = TargetRun(target, stack, base)
        run.create(alice)
    for run in runs.values():
        run.first_pass(alice)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    pending = dict(runs)
    while pending and time.monotonic() < deadline:
        for name, run in list(pending.items()):
            if run.step(alice):
                del pending[name]
        time.sleep(PASS_PAUSE)
    for target in targets:  # leave the legs idle for the other tests
        helpers.slurm_cli("scancel", "--user=alice", leg=target.leg_name)
    return runs


def prepare_alice_directories() -> None:
    """A fresh tree for this run: a file left by an earlier run (the array's `release`) must not
    change what a job does."""
    shutil.rmtree(ALICE_ROOT, ignore_errors=True)
    alice = pwd.getpwnam("alice")
    os.makedirs(ALICE_ROOT)
    os.chown(ALICE_ROOT, alice.pw_uid, alice.pw_gid)


BLOCKERS: dict[str, int] = {}  # leg -> the long job of alice's that dependency rows wait for


def prepare_leg(target: Target) -> None:
    """Once per leg: a reservation in the future for the reservation row, and a long job of
    alice's for the dependency row (cancelled with all of hers once the matrix has settled)."""
    if target.leg_name not in BLOCKERS:
        helpers.slurm_cli("scontrol", "delete", "reservation=jgs-matrix", leg=target.leg_name)
        # licenses only: a reservation of the node would refuse every job without a time limit
        helpers.slurm_cli("scontrol", "create", "reservation", "reservation=jgs-matrix", "users=alice",
                          "starttime=now+7days", "duration=10", "licenses=jgslicense:1", "flags=any_nodes",
                          leg=target.leg_name, check=True)
        BLOCKERS[target.leg_name] = helpers.SlurmControl(helpers.get_stack(), target.leg_name).slurm_submit(
            "alice", "#!/bin/bash\nsleep 3600\n")
    target.blocker = BLOCKERS[target.leg_name]


def submitted(item: Tracked) -> bool:
    return item.submission.get("slurm_job_id") is not None


def rejection(item: Tracked) -> str:
    return item.submission.get("report_message") or ""


params = pytest.mark.parametrize("target_id", [t.id for t in TARGETS])


# ------------------------------------------------------------------------------------------ tests

@params
def test_every_pass_completes(matrix, target_id):
    failed = [result for result in matrix[target_id].results if result.returncode not in (0, 1)]
    assert not failed, f"exit {failed[0].returncode}:\n{failed[0].stderr[-3000:]}"


@params
def test_happy_path_runs_as_the_user_and_ends_done(matrix, target_id):
    run = matrix[target_id]
    item = run.one("happy")
    sub = item.submission
    assert sub["status"] == "DONE", (sub, run.results[-1].stderr[-2000:])
    job_id = sub["slurm_job_id"]
    assert item.record and "JobName=from-the-arguments" in item.record, item.record  # arguments win over #SBATCH
    assert "TimeLimit=00:05:00" in item.record and "UserId=alice(" in item.record
    directory = item.notes["directory"]
    alice_uid = pwd.getpwnam("alice").pw_uid
    for name in ("job.sh", "helper.sh"):
        assert os.stat(f"{directory}/{name}").st_uid == alice_uid
    output = Path(f"{directory}/happy-{job_id}.out").read_text()
    assert f"user=alice pwd={directory} greeting=hello-from-support" in output
    assert json.loads(sub["slurm_job_info"])["job_id"] == job_id


@params
def test_nonzero_exit_ends_aborted_with_the_exit_code(matrix, target_id):
    sub = matrix[target_id].one("exit3").submission
    assert sub["status"] == "ABORTED" and sub["slurm_job_state"] == "FAILED", sub
    if "job_state" not in json.loads(sub["slurm_job_info"]) and target_id.endswith("v0.0.38"):
        # slurmctld forgot the job (MinJobAge) before a pass saw it end, and slurmdbd's v0.0.38 has no exit codes
        assert sub["report_message"] == UNKNOWN_EXIT_CODE_REASON, sub
    else:
        assert "exit code 3" in sub["report_message"], sub


@params
def test_array_with_one_failed_task_ends_aborted_naming_the_task(matrix, target_id):
    sub = matrix[target_id].one("array-mixed").submission
    assert sub["status"] == "ABORTED", sub
    assert re.search(r"\btasks? 0\b", sub["report_message"] or ""), sub["report_message"]


@params
def test_array_stays_active_while_a_task_runs_and_ends_done(matrix, target_id):
    item = matrix[target_id].one("array-order")
    assert item.submission["status"] == "DONE", item.submission
    seen = item.notes.get("task0_running_while", [])
    assert any(running for _, running in seen), "task 0 was never seen running: the check proved nothing"
    assert all(status != "DONE" for status, running in seen if running), seen


@params
def test_cancel_while_running_cancels_the_job(matrix, target_id):
    item = matrix[target_id].one("cancel")
    sub = item.submission
    assert "cancelled" in item.notes, "the job never ran"
    assert sub["status"] == "ABORTED" and sub["slurm_job_state"] == "CANCELLED", sub


@params
def test_job_purged_from_slurmctld_ends_with_its_state_from_slurmdbd(matrix, target_id):
    item = matrix[target_id].one("purge")
    assert item.notes.get("purged"), "slurmctld never purged the job"
    sub = item.submission
    assert sub["status"] == "DONE" and sub["slurm_job_state"] == "COMPLETED", sub


@params
def test_bad_values_are_rejected_with_a_reason_naming_them(matrix, target_id):
    run = matrix[target_id]
    for item, (arguments, named) in zip(run.of_kind("bad"), BAD_VALUES):
        sub = item.submission
        assert sub["status"] == "REJECTED", (arguments, sub)
        assert named in rejection(item), (arguments, rejection(item))
        assert helpers.SlurmControl(run.stack, run.target.leg_name).slurm_jobs_with_comment(tag(sub, run.target.client)) == []


@pytest.mark.parametrize("target_id, index", [(t.id, i) for t in TARGETS for i in range(len(OPTION_ROWS))],
                         ids=[f"{t.id}-{i}-{row.option}" for t in TARGETS for i, row in enumerate(OPTION_ROWS)])
def test_every_option_takes_effect_or_is_refused_by_name(matrix, figures, target_id, index):
    run = matrix[target_id]
    item = run.of_kind("option")[index]
    row = item.row
    sub = item.submission
    words = row.words(run.target)
    if row.refused_always or not submitted(item):
        assert sub["status"] == "REJECTED", (words, sub)
        assert f"--{row.option}" in rejection(item), (words, rejection(item))
        figures.record(f"matrix {target_id}: option rows refused by name")
        return
    assert sub["status"] in ("SUBMITTED", "RUNNING", "DONE", "ABORTED"), (words, sub)
    if row.shows is None:
        warned = [line for result in run.results for line in result.log
                  if line.get("levelname", line.get("level")) in ("WARNING", "ERROR")
                  and line.get("submission_id") == sub["id"]]
        assert not warned, (words, warned)
        figures.record(f"matrix {target_id}: option rows accepted without a warning (no record shows them)")
        return
    assert item.record, f"{words}: slurmctld had no record of job {sub['slurm_job_id']}"
    if callable(row.shows):
        assert row.shows(run.target, item.record, item.notes["directory"]), (words, item.record)
    else:
        assert re.search(row.shows, item.record), (words, row.shows, item.record)
    figures.record(f"matrix {target_id}: option rows in effect on the job record")
