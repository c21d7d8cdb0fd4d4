"""The ldap mapper against the stack's real OpenLDAP (Debian's slapd, LDAPS and StartTLS with the
stack's test CA): owners mapped through the directory, its refusals, its outage and a CA that
does not vouch for it, on the default Slurm leg."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

from config_files import write_secret
from helpers import Stack, wait_for
from scenario import job_for, new_submission, status_of
from tool import Tool

SCRIPT = b"#!/bin/bash\n#SBATCH --job-name=jgs-ldap\necho \"user=$(id -un)\"\n"


@pytest.fixture
def ldap(stack: Stack) -> dict[str, str]:
    if "url" not in stack.ldap:
        pytest.fail("stack.env has no JGS_LDAP_* settings: run tests/integration/stack.sh up", pytrace=False)
    return stack.ldap


@pytest.fixture
def ldap_tool(make_tool: Callable[..., Tool], ldap: dict[str, str], tmp_path: Path) -> Callable[..., Tool]:
    """ldap_tool(name, **overrides): a tool whose mapper is the stack's directory over LDAPS."""
    password_file = write_secret(tmp_path / "ldap_password", ldap["bind_password"].encode() + b"\n")

    def make(name: str = "ldap", **overrides: Any) -> Tool:
        settings = {"mapper__type": "ldap", "mapper__ldap_url": ldap["url"], "mapper__ldap_ca_file": ldap["ca_file"],
                    "mapper__ldap_bind_dn": ldap["bind_dn"], "mapper__ldap_password_file": password_file,
                    "mapper__ldap_base_dn": ldap["base_dn"], "mapper__ldap_timeout": 3}
        settings.update(overrides)
        return make_tool(name, **settings)

    return make


def test_an_owner_mapped_through_ldap_gets_a_job_that_runs_as_them(alice, ldap_tool, slurm):
    tool = ldap_tool()
    sub = new_submission(alice, {"job.sh": SCRIPT}, execution_directory="/home/alice/jgs-ldap")

    result = tool.run()

    assert result.returncode == 0, result.stderr[-3000:]
    current = alice.get_submission(sub["id"])
    assert current["status"] == "SUBMITTED", (current, result.stderr[-3000:])
    job = slurm.slurm_job(current["slurm_job_id"])
    assert job and job["user_name"] == "alice", job
    cache = tool.directory / "state" / "ldap-cache.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text())["alice@example.com"]["username"] == "alice"
    tool.run_until(lambda: status_of(alice, sub) == "DONE")
    output = Path(f"/home/alice/jgs-ldap/slurm-{current['slurm_job_id']}.out")
    assert "user=alice" in wait_for(lambda: output.exists() and output.read_text(), 30, message=f"{output}")


def test_no_entry_an_entry_without_account_and_a_shared_mail_are_rejected(users, ldap_tool, slurm, ldap):
    tool = ldap_tool()  # first: a new test's first tool drains the cluster's earlier submissions
    nobody = new_submission(users["root-user"], {"job.sh": SCRIPT})  # root@example.com: not in the directory
    ghost = new_submission(users["ghost"], {"job.sh": SCRIPT})  # uid ghost: no account on this machine
    shared = new_submission(users["admin"], {"job.sh": SCRIPT})  # admin@example.com: on two entries

    result = tool.run()

    assert result.returncode == 0, result.stderr[-3000:]
    messages = {}
    for owner, sub in (("root-user", nobody), ("ghost", ghost), ("admin", shared)):
        current = users[owner].get_submission(sub["id"])
        assert current["status"] == "REJECTED"
        assert job_for(slurm, sub) == []
        messages[owner] = current["report_message"]
    assert "owner email 'root@example.com' has no entry in this cluster's LDAP directory" in messages["root-user"]
    assert "owner email 'ghost@example.com' maps to user 'ghost', which does not exist" in messages["ghost"]
    base = ldap["base_dn"]
    assert "owner email 'admin@example.com' matches 2 entries" in messages["admin"]
    assert f"uid=admin-one,ou=people,{base}" in messages["admin"] and f"uid=admin-two,ou=people,{base}" in messages["admin"]


def test_with_slapd_stopped_the_submission_waits_and_is_submitted_once_it_is_back(alice, ldap_tool, services):
    tool = ldap_tool(mapper__ldap_cache_ttl=0)
    sub = new_submission(alice, {"job.sh": SCRIPT})

    services.stop("ldap")
    down = tool.run()

    assert down.returncode == 69, down.stderr[-3000:]
    assert status_of(alice, sub) == "CREATED", [line["message"] for line in down.log]
    assert any("LDAP server" in line["message"] and "left for the next pass" in line["message"] for line in down.log)

    services.start("ldap")
    back = tool.run()

    assert back.returncode == 0, back.stderr[-3000:]
    assert status_of(alice, sub) == "SUBMITTED"


def test_a_ca_that_did_not_sign_the_server_certificate_ends_the_pass_with_78(alice, ldap_tool, ldap):
    tool = ldap_tool(mapper__ldap_ca_file=ldap["other_ca_file"])
    sub = new_submission(alice, {"job.sh": SCRIPT})

    result = tool.run()

    assert result.returncode == 78, result.stderr[-3000:]
    assert status_of(alice, sub) == "CREATED"
    assert any(f"its TLS certificate is not trusted by [mapper] ldap_ca_file {ldap['other_ca_file']}" in line["message"]
               for line in result.log), result.stderr[-3000:]
    checked = tool.check("--email", "alice@example.com")
    assert checked.returncode == 78
    assert "FAIL LDAP directory:" in checked.stdout and "skip user mapping of alice@example.com" in checked.stdout


def test_check_over_starttls_shows_the_directory_and_the_account_found(ldap_tool, ldap):
    tool = ldap_tool(mapper__ldap_url=ldap["starttls_url"], mapper__ldap_starttls="true")

    result = tool.check("--email", "alice@example.com")

    assert result.returncode == 0, result.stdout
    assert (f"ok   LDAP directory: {ldap['starttls_url']} (StartTLS), bound as {ldap['bind_dn']}, "
            f"base {ldap['base_dn']} readable") in result.stdout.splitlines()
    assert "ok   user mapping of alice@example.com: user alice (uid " in result.stdout


def test_check_with_a_wrong_bind_password_fails_with_77(ldap_tool, tmp_path):
    tool = ldap_tool(mapper__ldap_password_file=write_secret(tmp_path / "wrong", b"not-the-password\n"))

    result = tool.check()

    assert result.returncode == 77, result.stdout
    assert "FAIL LDAP directory: LDAP bind at" in result.stdout and "invalidCredentials" in result.stdout
    assert "not-the-password" not in result.stdout + result.stderr
