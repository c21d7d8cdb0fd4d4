"""The state directory, the lock and the files in them decide which account jobs run as and whether a
pass runs at all: only the user running the tool (root) may shape them. A directory, parent, lock or
state file another account owns or can write is refused with exit 78 naming it."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

import jobbergate_sync
from fakes import check_lines, run
from jobbergate_sync import EX_CONFIG, main

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another account needs root")
NOBODY = pwd.getpwnam("nobody").pw_uid


def give_away(path: Path) -> None:
    os.chown(path, NOBODY, -1, follow_symlinks=False)


def run_refused(config: str, capsys) -> str:
    """Runs a pass that must be refused as misconfigured; what it logged."""
    assert run(config) == EX_CONFIG
    return capsys.readouterr().err


@as_root
def test_a_state_directory_another_account_made_first_is_refused(stack, config_file, email, tmp_path, capsys):
    stack.api.add_submission(1, email=email)
    (tmp_path / "state").mkdir(mode=0o700)
    give_away(tmp_path / "state")

    err = run_refused(config_file(), capsys)

    assert f"[run] state_dir {tmp_path / 'state'} is owned by nobody" in err
    assert stack.api.calls == [] and stack.slurm.submitted == []


@as_root
@pytest.mark.parametrize(("mode", "owner", "refused"), [
    (0o1777, 0, False),  # like /tmp: sticky and root's
    (0o777, 0, True),
    (0o775, 0, True),
    (0o1777, NOBODY, True),
    (0o755, NOBODY, True),
])
def test_every_directory_above_the_state_directory_is_roots_and_closed_to_others(stack, config_file, email, tmp_path,
                                                                                capsys, mode, owner, refused):
    stack.api.add_submission(1, email=email)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    os.chown(shared, owner, -1)

    code = run(config_file(**{"run.state_dir": str(shared / "deep" / "state")}))

    assert code == (EX_CONFIG if refused else 0)
    if refused:
        assert f"the directory {shared} above it" in capsys.readouterr().err
        assert stack.api.calls == []


@as_root
def test_a_symbolic_link_is_judged_by_where_it_leads_too(stack, config_file, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    (theirs / "state").mkdir(parents=True, mode=0o700)
    give_away(theirs)
    (tmp_path / "link").symlink_to(theirs)

    err = run_refused(config_file(**{"run.state_dir": str(tmp_path / "link" / "state")}), capsys)

    assert f"[run] state_dir {tmp_path / 'link' / 'state'}: the directory" in err and "is owned by nobody" in err


@as_root
def test_a_lock_file_another_account_made_first_is_refused(stack, config_file, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / "lock"
    lock.touch(mode=0o600)
    give_away(lock)

    err = run_refused(config_file(), capsys)

    assert f"[run] lock_file {lock} is owned by nobody" in err


@as_root
def test_a_lock_directory_another_account_can_write_to_is_refused(stack, config_file, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    give_away(tmp_path / "run")

    err = run_refused(config_file(), capsys)

    assert f"[run] lock_file {tmp_path / 'run' / 'lock'}: its directory {tmp_path / 'run'} is owned by nobody" in err


def test_a_lock_in_a_directory_anyone_can_write_to_is_refused_even_when_sticky(stack, config_file, tmp_path, capsys):
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone could create the lock there first, and hold it

    err = run_refused(config_file(**{"run.lock_file": str(shared / "jobbergate-sync.lock")}), capsys)

    assert f"its directory {shared} is open to group or others (mode 1777); anyone there could hold the lock" in err


def test_a_lock_file_others_can_read_is_refused_as_they_could_hold_it(stack, config_file, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "lock").touch(mode=0o644)

    err = run_refused(config_file(), capsys)

    assert "is accessible by group or others (mode 0644)" in err


def test_a_lock_file_that_is_a_symbolic_link_is_refused(stack, config_file, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").touch(mode=0o600)
    (tmp_path / "run" / "lock").symlink_to(tmp_path / "elsewhere")

    err = run_refused(config_file(), capsys)

    assert f"[run] lock_file {tmp_path / 'run' / 'lock'} is a symbolic link" in err


STATE_FILES = ["journal.sqlite3", "token.json", "slurmrestd.json", "slurm-jobs.json"]


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_state_file_that_is_a_symbolic_link_is_refused(stack, config_file, email, tmp_path, capsys, name):
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=200)
    stack.slurm.add_job(200, "RUNNING")
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "elsewhere").write_text("{}")
    (tmp_path / "elsewhere").chmod(0o600)
    (tmp_path / "state" / name).symlink_to(tmp_path / "elsewhere")

    err = run_refused(config_file(), capsys)

    assert f"{tmp_path / 'state' / name} is a symbolic link" in err


@as_root
@pytest.mark.parametrize("name", STATE_FILES)
def test_a_state_file_another_account_owns_is_refused(stack, config_file, email, tmp_path, capsys, name):
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=200)
    stack.slurm.add_job(200, "RUNNING")
    config = config_file()
    assert run(config) == 0  # every state file made by a pass
    assert (tmp_path / "state" / name).exists()
    give_away(tmp_path / "state" / name)
    capsys.readouterr()

    err = run_refused(config, capsys)

    assert f"{tmp_path / 'state' / name} is owned by nobody" in err


def test_the_ldap_cache_is_read_only_when_private(tmp_path):
    cache = tmp_path / "ldap-cache.json"
    cache.write_text('{"evil@example.com": {"username": "victim", "at": 0}}')
    cache.chmod(0o644)
    with pytest.raises(jobbergate_sync.ConfigError, match="accessible by group or others"):
        jobbergate_sync.read_private_file(str(cache))
    assert jobbergate_sync.read_private_file(str(tmp_path / "absent.json")) is None


@as_root
def test_a_dry_run_refuses_a_state_directory_another_account_owns(stack, config_file, email, tmp_path, capsys):
    stack.api.add_submission(1, email=email)
    (tmp_path / "state").mkdir(mode=0o700)
    give_away(tmp_path / "state")

    assert main(["--once", "--dry-run", "--config", config_file()]) == EX_CONFIG
    assert "is owned by nobody" in capsys.readouterr().err


@as_root
def test_check_names_a_state_directory_another_account_owns(stack, config_file, tmp_path, capsys):
    (tmp_path / "state").mkdir(mode=0o700)
    give_away(tmp_path / "state")

    code, lines = check_lines(capsys, config_file())

    assert code == EX_CONFIG
    status, detail = lines["state directory and lock"]
    assert status == "FAIL" and f"{tmp_path / 'state'} is owned by nobody" in detail
