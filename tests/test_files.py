"""Files are written by a child that became the user: the privilege boundary, for real (as root)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import tempfile
from pathlib import Path

import pytest

import jobbergate_sync
from fakes import run
from jobbergate_sync import LocalUser, Rejection, run_as_user, stage_in_directory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege boundary exists only when running as root")


@pytest.fixture
def nobody() -> LocalUser:
    entry = pwd.getpwnam("nobody")
    return LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def staged(content: bytes) -> tempfile.TemporaryFile:
    handle = tempfile.TemporaryFile()
    handle.write(content)
    handle.flush()
    return handle


def test_child_has_the_users_identity_and_only_its_groups(nobody):
    saved = os.getgroups()
    os.setgroups([0, grp.getgrnam("adm").gr_gid])  # root's extra groups must not leak into the child
    try:
        def report_identity():
            raise Rejection(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                                        "groups": sorted(os.getgroups())}))

        with pytest.raises(Rejection) as raised:
            run_as_user(nobody, report_identity)
    finally:
        os.setgroups(saved)
    identity = json.loads(str(raised.value))
    assert identity["uid"] == identity["euid"] == nobody.uid
    assert identity["gid"] == nobody.gid
    assert identity["groups"] == sorted(set(os.getgrouplist("nobody", nobody.gid)))


def test_files_are_written_owned_by_the_user(nobody, exec_root):
    target = exec_root / "new" / "deeper"
    with staged(b"#!/bin/sh\n") as script, staged(b"data") as data:
        run_as_user(nobody, lambda: stage_in_directory(str(target), [("job.sh", script.fileno()), ("d.txt", data.fileno())]))
    assert (target / "job.sh").read_bytes() == b"#!/bin/sh\n"
    assert (target / "d.txt").read_bytes() == b"data"
    assert {(target / n).stat().st_uid for n in ("job.sh", "d.txt")} == {nobody.uid}
    assert target.stat().st_uid == nobody.uid


def test_a_planted_symlink_is_not_followed(nobody, exec_root, tmp_path):
    victim = Path(tempfile.mkdtemp()) / "root-owned.conf"
    victim.write_text("precious\n")
    victim.chmod(0o666)  # even a file the user could write is not reached through the link
    victim.parent.chmod(0o755)
    (exec_root / "job.sh").symlink_to(victim)
    with staged(b"#!/bin/sh\nevil\n") as script:
        with pytest.raises(Rejection, match=r"job\.sh is a symbolic link; refusing to write through it"):
            run_as_user(nobody, lambda: stage_in_directory(str(exec_root), [("job.sh", script.fileno())]))
    assert victim.read_text() == "precious\n"


def test_a_root_only_directory_cannot_be_written_through(nobody, exec_root):
    protected = exec_root / "protected"
    protected.mkdir(mode=0o755)  # root-owned
    with staged(b"x") as data:
        with pytest.raises(Rejection, match="is not writable by the job's user"):
            run_as_user(nobody, lambda: stage_in_directory(str(protected), [("f", data.fileno())]))
        with pytest.raises(Rejection, match="cannot create execution directory .*/protected/sub: Permission denied"):
            run_as_user(nobody, lambda: stage_in_directory(str(protected / "sub"), [("f", data.fileno())]))
    assert list(protected.iterdir()) == []


def test_execution_directory_that_is_a_symlink_or_a_file(nobody, exec_root):
    real = exec_root / "real"
    real.mkdir()
    os.chown(real, nobody.uid, nobody.gid)
    (exec_root / "link").symlink_to(real)
    (exec_root / "file").write_text("")
    with staged(b"x") as data:
        with pytest.raises(Rejection, match="is a symbolic link; give the real directory"):
            run_as_user(nobody, lambda: stage_in_directory(str(exec_root / "link"), [("f", data.fileno())]))
        with pytest.raises(Rejection, match="is not a directory"):
            run_as_user(nobody, lambda: stage_in_directory(str(exec_root / "file"), [("f", data.fileno())]))
    assert list(real.iterdir()) == []


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(nobody, exec_root):
    os.mkfifo(exec_root / "job.sh")
    os.chown(exec_root / "job.sh", nobody.uid, nobody.gid)
    with staged(b"x") as data:
        with pytest.raises(Rejection, match="job.sh"):
            run_as_user(nobody, lambda: stage_in_directory(str(exec_root), [("job.sh", data.fileno())]))


def test_a_crashing_child_is_an_item_error_not_a_rejection(nobody):
    with pytest.raises(jobbergate_sync.ItemError, match="ZeroDivisionError"):
        run_as_user(nobody, lambda: 1 / 0)


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
