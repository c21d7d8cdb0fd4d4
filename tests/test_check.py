"""The check command: one line per check, the fix with every failure, nothing written or sent."""

from __future__ import annotations

import os
import pwd
import re

import pytest
import requests

import jobbergate_sync
from config_files import write_secret
from fakes import API, CLIENT_SECRET, JWT_KEY, run
from jobbergate_sync import main

STATE_FILES = ("token.json", "journal.sqlite3", "slurmrestd.json")


def check(capsys, config, *extra):
    """(exit code, {what: (status, detail)}, stdout lines)"""
    code = main(["check", "--config", config, *extra])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    parsed = {}
    for line in lines:
        match = re.fullmatch(r"(ok  |FAIL|skip) ([^:]+): (.*)", line)
        assert match, line
        parsed[match.group(2)] = (match.group(1).strip(), match.group(3))
    return code, parsed, lines, captured.err


def assert_nothing_written_or_sent(stack, tmp_path):
    for name in STATE_FILES:
        assert not (tmp_path / "state" / name).exists(), name
    assert [name for name, _, _ in stack.api.calls] in ([], ["pending", "active"], ["pending"])
    assert all(method == "GET" for method, _, _ in stack.slurm.requests)
    assert stack.api.health == [] and stack.slurm.submitted == []


def test_a_healthy_set_up_passes_every_check(stack, config_file, tmp_path, capsys):
    stack.api.add_submission(1)
    code, lines, text, err = check(capsys, config_file())
    assert code == 0, text
    assert [what for what in lines] == ["configuration", "secret files", "OIDC token", "Jobbergate API", "slurmrestd",
                                        "slurmdbd", "slurmrestd token for slurm", "head nodes", "state directory and lock"]
    assert all(status == "ok" for status, _ in lines.values()), text
    assert "jobbergate:job-submissions:read" in lines["OIDC token"][1]
    assert lines["Jobbergate API"][1] == f"{API}: agent/pending (1 pending), agent/active (0 active)"
    assert "serves v0.0.38 (Slurm 22.05.8); uses v0.0.38 (chosen by api_version = auto)" in lines["slurmrestd"][1]
    assert lines["slurmdbd"][1].startswith("/slurmdb/v0.0.38/ paths not served; slurmdbd = auto: not used")
    assert "taken and released" in lines["state directory and lock"][1]
    assert err == ""  # no log noise without -v
    assert_nothing_written_or_sent(stack, tmp_path)
    assert stack.api.status(1) == "CREATED"


def test_no_secret_is_printed_even_with_verbose(stack, config_file, capsys):
    code, _, text, err = check(capsys, config_file(), "-v")
    assert code == 0
    secrets = [CLIENT_SECRET, JWT_KEY.decode(), *stack.issuer.issued,
               *{headers["X-SLURM-USER-TOKEN"] for _, _, headers in stack.slurm.requests}]
    for secret in secrets:
        assert secret not in "\n".join(text) and secret not in err
    assert "-> HTTP 200" in err  # -v shows the exchanges


def test_email_shows_the_user_and_pings_slurmrestd_as_them(stack, config_file, email, job_user, exec_root, capsys):
    code, lines, text, _ = check(capsys, config_file(), "--email", email)
    assert code == 0, text
    name = job_user.pw_name
    assert lines[f"slurmrestd token for {name}"][0] == "ok"
    assert lines[f"user mapping of {email}"] == (
        "ok", f"user {name} (uid {job_user.pw_uid}), home {job_user.pw_dir}, execution directory {exec_root}/{name} "
              "(unless the submission names one)")
    assert any(headers.get("X-SLURM-USER-NAME") == name and url.endswith("/ping")
               for _, url, headers in stack.slurm.requests)


def test_email_of_a_missing_user_fails_with_the_fix(stack, config_file, capsys):
    code, lines, text, _ = check(capsys, config_file(), "--email", "no-such-user-here@example.com")
    assert code == jobbergate_sync.EX_NOUSER
    status, detail = lines["user mapping of no-such-user-here@example.com"]
    assert status == "FAIL" and "'no-such-user-here', which does not exist" in detail and "useradd" in detail
    assert lines["slurmrestd token for no-such-user-here@example.com"] == ("skip", "needs user mapping")
    assert lines["slurmrestd token for slurm"][0] == "ok"


def test_issuer_refusing_the_secret(stack, config_file, tmp_path, capsys):
    config = config_file(oidc__client_secret_file=write_secret(tmp_path / "wrong", b"not-the-secret"))
    code, lines, _, _ = check(capsys, config)
    assert code == jobbergate_sync.EX_NOPERM
    status, detail = lines["OIDC token"]
    assert status == "FAIL" and "HTTP 401 Invalid client secret" in detail and "[oidc] client_id" in detail
    assert lines["Jobbergate API"] == ("skip", "needs OIDC token")
    assert lines["slurmrestd"][0] == "ok" and lines["state directory and lock"][0] == "ok"
    assert "not-the-secret" not in str(lines)


def test_issuer_down(stack, config_file, tmp_path, capsys):
    stack.issuer.answers["token"] = [requests.ConnectionError("refused")]
    code, lines, _, _ = check(capsys, config_file())
    assert code == jobbergate_sync.EX_UNAVAILABLE
    status, detail = lines["OIDC token"]
    assert status == "FAIL" and "connection failed" in detail and "[oidc] issuer" in detail
    assert lines["Jobbergate API"] == ("skip", "needs OIDC token")
    assert_nothing_written_or_sent(stack, tmp_path)


def test_api_url_without_the_mount_is_a_configuration_error(stack, config_file, tmp_path, capsys):
    code, lines, _, _ = check(capsys, config_file(jobbergate__api_url=API.removesuffix("/jobbergate")))
    assert code == jobbergate_sync.EX_CONFIG
    status, detail = lines["Jobbergate API"]
    assert status == "FAIL" and "HTTP 404" in detail and "[jobbergate] api_url" in detail and "/jobbergate" in detail
    assert lines["slurmrestd"][0] == "ok"
    assert_nothing_written_or_sent(stack, tmp_path)


def test_missing_permission_is_named(stack, config_file, capsys):
    stack.issuer.permissions = ["jobbergate:job-scripts:read", "jobbergate:job-submissions:update"]
    code, lines, _, _ = check(capsys, config_file())
    assert code == jobbergate_sync.EX_NOPERM
    status, detail = lines["OIDC token"]
    assert status == "FAIL" and "missing jobbergate:job-submissions:read, jobbergate:clusters:update" in detail
    status, detail = lines["Jobbergate API"]
    assert status == "FAIL" and "403" in detail and "give client test-cluster jobbergate:job-submissions:read" in detail


def test_admin_covers_all_but_the_cluster_ping(stack, config_file, capsys):
    stack.issuer.permissions = ["jobbergate:admin"]
    code, lines, _, _ = check(capsys, config_file())
    assert code == jobbergate_sync.EX_NOPERM
    assert lines["OIDC token"][1].endswith("missing jobbergate:clusters:update; give client test-cluster those "
                                           "roles, mapped into the token's top-level permissions claim")
    assert lines["Jobbergate API"][0] == "ok"


def test_slurmrestd_down(stack, config_file, tmp_path, capsys):
    stack.slurm.down = True
    code, lines, text, _ = check(capsys, config_file(), "--email", "nobody@example.com")
    assert code == jobbergate_sync.EX_UNAVAILABLE, text
    status, detail = lines["slurmrestd"]
    assert status == "FAIL" and "connection failed" in detail and "check [slurmrestd] url" in detail
    assert lines["slurmdbd"] == ("skip", "needs slurmrestd")
    assert lines["slurmrestd token for slurm"] == ("skip", "needs slurmrestd")
    assert lines["OIDC token"][0] == lines["Jobbergate API"][0] == "ok"
    assert_nothing_written_or_sent(stack, tmp_path)


def test_slurmrestd_serving_no_supported_version(stack, config_file, tmp_path, capsys):
    stack.slurm.answers["openapi"] = [(200, {"paths": {"/slurm/v0.0.36/job/submit": {}, "/slurm/v0.0.37/job/submit": {}}})]
    code, lines, _, _ = check(capsys, config_file())
    assert code == jobbergate_sync.EX_CONFIG
    status, detail = lines["slurmrestd"]
    assert status == "FAIL" and "serves v0.0.36, v0.0.37; this tool supports v0.0.38 to v0.0.44" in detail
    assert lines["slurmrestd token for slurm"] == ("skip", "needs slurmrestd")
    assert_nothing_written_or_sent(stack, tmp_path)


def test_a_pinned_version_slurmrestd_does_not_serve(stack, config_file, capsys):
    code, lines, _, _ = check(capsys, config_file(slurmrestd__api_version="v0.0.40"))
    assert code == jobbergate_sync.EX_CONFIG
    assert lines["slurmrestd"] == ("FAIL", "http://slurm.test:6820 serves v0.0.38 (Slurm 22.05.8), not the pinned "
                                           "api_version v0.0.40; set [slurmrestd] api_version = auto or to a version "
                                           "it serves")


@pytest.mark.parametrize(("setting", "served", "status"), [
    ("auto", True, "ok"), ("auto", False, "ok"), ("true", True, "ok"), ("true", False, "FAIL"), ("false", True, "ok")])
def test_slurmdbd_line(stack, config_file, capsys, setting, served, status):
    stack.slurm.serves_slurmdbd = served
    code, lines, _, _ = check(capsys, config_file(slurmrestd__slurmdbd=setting))
    assert lines["slurmdbd"][0] == status
    assert f"slurmdbd = {setting}" in lines["slurmdbd"][1]
    assert ("not used" in lines["slurmdbd"][1]) == (status == "ok" and not (served and setting != "false"))
    assert code == (jobbergate_sync.EX_CONFIG if status == "FAIL" else 0)


@pytest.mark.parametrize(("answer", "code"), [(None, jobbergate_sync.EX_UNAVAILABLE),  # 22.05: 500 + error 5005
                                              ((401, "Authentication failure"), jobbergate_sync.EX_NOPERM)])
def test_a_wrong_jwt_key_fails_the_slurm_token_line(stack, config_file, tmp_path, capsys, answer, code):
    if answer:
        stack.slurm.refused_token_answer = (answer[0], {"Content-Type": "text/plain"}, answer[1])
    config = config_file(slurmrestd__jwt_key_file=write_secret(tmp_path / "other.key", b"another-key-of-32-bytes-long!!!!"))
    got, lines, text, _ = check(capsys, config, "--email", "nobody@example.com")
    assert got == code, text
    assert lines["slurmrestd"][0] == "ok"  # its OpenAPI document needs no slurmctld
    status, detail = lines["slurmrestd token for slurm"]
    assert status == "FAIL" and "jwt_key_file" in detail and "AuthAltParameters jwt_key=" in detail
    assert lines["slurmrestd token for nobody"] == ("skip", "needs slurmrestd token for slurm")


def test_state_dir_that_cannot_be_created(stack, config_file, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    code, lines, _, _ = check(capsys, config_file(run__state_dir=str(tmp_path / "a-file" / "state")))
    assert code == jobbergate_sync.EX_CONFIG
    status, detail = lines["state directory and lock"]
    assert status == "FAIL" and "cannot create: Not a directory" in detail and "0700" in detail


def test_state_dir_open_to_others(stack, config_file, tmp_path, capsys):
    (tmp_path / "state").mkdir()
    (tmp_path / "state").chmod(0o755)
    code, lines, _, _ = check(capsys, config_file())
    assert code == jobbergate_sync.EX_CONFIG
    assert "chmod 0700 it" in lines["state directory and lock"][1]


def test_state_dir_not_writable(stack, config_file, tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(jobbergate_sync.tempfile, "TemporaryFile", read_only)
    code, lines, _, _ = check(capsys, config_file())
    assert code == jobbergate_sync.EX_CONFIG
    assert lines["state directory and lock"][0] == "FAIL" and "Read-only file system" in lines["state directory and lock"][1]


def test_a_running_pass_is_not_a_failure_and_does_not_block(stack, config_file, tmp_path, capsys):
    config = config_file()
    with jobbergate_sync.RunLock(str(tmp_path / "run" / "lock")):  # as a running pass holds it
        code, lines, _, _ = check(capsys, config)
    assert code == 0
    assert lines["state directory and lock"][1].endswith("held: a pass is running")


def test_the_check_leaves_only_what_a_pass_creates(stack, config_file, tmp_path, capsys):
    code, _, _, _ = check(capsys, config_file())
    assert code == 0
    assert sorted(os.listdir(tmp_path / "state")) == []
    assert sorted(os.listdir(tmp_path / "run")) == ["lock"]
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_a_bad_configuration_skips_everything_else(tmp_path, capsys):
    code, lines, _, _ = check(capsys, str(tmp_path / "absent.ini"), "--email", "a@example.com")
    assert code == jobbergate_sync.EX_CONFIG
    assert lines["configuration"][0] == "FAIL" and "does not exist" in lines["configuration"][1]
    assert all(status == "skip" and detail == "needs configuration"
               for what, (status, detail) in lines.items() if what != "configuration")


def test_a_secret_file_owned_by_another_account_fails(stack, config_file, tmp_path, capsys, job_user):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    secret = write_secret(tmp_path / "given-away", CLIENT_SECRET.encode())
    os.chown(secret, 4242, 4242)
    code, lines, _, _ = check(capsys, config_file(oidc__client_secret_file=secret))
    assert code == jobbergate_sync.EX_CONFIG
    assert lines["secret files"] == ("FAIL", f"[oidc] client_secret_file {secret} is owned by uid 4242, who can read "
                                             f"and replace it; chown root: {secret} (and chmod 0600)")


def test_the_slurm_key_may_belong_to_a_system_account(stack, config_file, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    key = write_secret(tmp_path / "slurm.key", JWT_KEY, 0o400)
    os.chown(key, pwd.getpwnam("nobody").pw_uid, -1)  # no login shell, like SlurmUser
    code, lines, _, _ = check(capsys, config_file(slurmrestd__jwt_key_file=key, mapper__min_uid=1000))
    assert code == 0 and f"[slurmrestd] jwt_key_file {key} (0400, nobody)" in lines["secret files"][1]


def test_the_slurm_key_may_belong_to_a_debian_package_account_this_host_does_not_list(stack, config_file, tmp_path,
                                                                                       capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    unlisted = next(uid for uid in range(64030, 65000) if not _has_account(uid))  # Debian's slurm is 64030
    key = write_secret(tmp_path / "slurm.key", JWT_KEY, 0o600)
    os.chown(key, unlisted, -1)
    code, lines, _, _ = check(capsys, config_file(slurmrestd__jwt_key_file=key))
    assert code == 0 and f"[slurmrestd] jwt_key_file {key} (0600, uid {unlisted})" in lines["secret files"][1]


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_the_remembered_choice_is_neither_read_nor_written(stack, config_file, tmp_path, capsys):
    config = config_file()
    assert run(config) == 0  # a pass remembers v0.0.38
    (tmp_path / "state" / "slurmrestd.json").write_text('{"url": "http://slurm.test:6820", "api_version": "v0.0.44", '
                                                        '"slurmdbd": false}')
    code, lines, _, _ = check(capsys, config)
    assert code == 0 and "uses v0.0.38" in lines["slurmrestd"][1]
    assert "v0.0.44" in (tmp_path / "state" / "slurmrestd.json").read_text()


def test_the_token_cache_is_not_written(stack, config_file, tmp_path, capsys):
    config = config_file()
    assert run(config) == 0
    cached = (tmp_path / "state" / "token.json").read_text()
    code, _, _, _ = check(capsys, config)
    assert code == 0 and (tmp_path / "state" / "token.json").read_text() == cached
    assert len(stack.issuer.issued) == 2  # the check fetched its own token


# ---------------------------------------------------------------------------------------------
# The command line around it
# ---------------------------------------------------------------------------------------------


def test_help_lists_check(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "check" in out and "Commands:" in out
    assert main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "64", "67", "69", "70", "77", "78"):
        assert f"  {code}" in out
    assert "--email" in out


@pytest.mark.parametrize("argv", [[], ["--once"], ["--once", "-q"], ["-v"], ["--log-format", "text"]])
def test_the_pass_still_runs_without_a_command(stack, config_file, email, argv):
    stack.api.add_submission(1, email=email)
    assert main([*argv, "--config", config_file()]) == 0
    assert stack.api.status(1) == "SUBMITTED"


def test_dry_run_and_check_config_still_work(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    config = config_file()
    assert main(["--check-config", "--config", config]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    assert main(["--dry-run", "--config", config]) == 0
    assert stack.api.status(1) == "CREATED"


def test_config_given_before_the_command_or_by_environment(stack, config_file, monkeypatch, capsys):
    config = config_file()
    assert main(["--config", config, "check"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("JOBBERGATE_SYNC_CONFIG", config)
    assert main(["check"]) == 0
    assert "ok   configuration" in capsys.readouterr().out


def test_pass_options_do_not_go_with_check(config_file, capsys):
    assert main(["--once", "check", "--config", config_file()]) == jobbergate_sync.EX_USAGE
    assert main(["no-such-command"]) == jobbergate_sync.EX_USAGE
