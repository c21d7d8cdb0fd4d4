"""Smoke tests of the integration stack itself (not of jobbergate-sync)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from helpers import (
    AgentClient,
    IssuerControl,
    SlurmControl,
    Stack,
    StackNotUp,
    UserClient,
    get_stack,
    jwt_claims,
    oidc_token,
    slurm_job,
    slurm_jobs_with_comment,
    slurm_submit,
    slurmdb_job,
    state_of,
    unique,
    wait_for,
    wait_for_slurm_state,
)


def test_api_health(stack: Stack) -> None:
    assert requests.get(f"{stack.api_url}/health", timeout=5).status_code == 204


def test_user_submission_reaches_agent_pending(stack: Stack, alice: UserClient, unique_name: str) -> None:
    script = alice.create_job_script(
        unique_name,
        {"job.sh": b"#!/bin/bash\necho hello\n", "helper.txt": b"support file\n"},
        entrypoint="job.sh",
    )
    kinds = {f["filename"]: f["file_type"] for f in script["files"]}
    assert kinds == {"job.sh": "ENTRYPOINT", "helper.txt": "SUPPORT"}

    sub = alice.create_submission(
        script["id"], unique_name, client_id="local-slurm", execution_directory="/home/alice",
        sbatch_arguments=["--time=1"],
    )
    assert sub["status"] == "CREATED" and sub["owner_email"] == "alice@example.com"
    assert alice.get_submission(sub["id"])["client_id"] == "local-slurm"

    token = oidc_token(stack, "local-slurm", "local-slurm-secret")
    claims = jwt_claims(token)
    assert claims["azp"] == "local-slurm" and "jobbergate:job-submissions:read" in claims["permissions"]
    response = requests.get(
        f"{stack.api_url}/job-submissions/agent/pending",
        headers={"Authorization": f"Bearer {token}"},
        params={"size": 100},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    agent = AgentClient(stack)
    pending = {item["id"]: item for item in agent.pending()}
    assert sub["id"] in pending
    assert pending[sub["id"]]["job_script"]["id"] == script["id"]

    # the agent can download the file; then take the submission out of the way of later tests
    download = agent.request("GET", f"/job-scripts/{script['id']}/upload/job.sh")
    assert download.status_code == 200 and download.content == b"#!/bin/bash\necho hello\n"
    agent.mark_rejected(sub["id"], "stack smoke test cleanup")
    assert alice.get_submission(sub["id"])["status"] == "REJECTED"
    assert isinstance(alice.progress(sub["id"]), list)

    agent.ping(interval=60)
    status = alice.cluster_status("local-slurm")
    assert status is not None and status["client_id"] == "local-slurm" and status["is_healthy"] is True


def test_issuer_controls(stack: Stack, issuer: IssuerControl) -> None:
    oidc_token(stack)
    assert issuer.issued("local-slurm", "client_credentials") == 1
    bad = requests.post(stack.token_url, data={"grant_type": "client_credentials", "client_id": "local-slurm", "client_secret": "nope"},
                        timeout=5)
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized_client"
    assert issuer.refused("local-slurm") == 1

    issuer.set_ttl(5)
    assert jwt_claims(oidc_token(stack))["exp"] - jwt_claims(oidc_token(stack))["iat"] == 5

    issuer.fault(1, status=503)
    assert requests.post(stack.token_url, auth=("local-slurm", "local-slurm-secret"), data={"grant_type": "client_credentials"},
                         timeout=5).status_code == 503
    assert requests.post(stack.token_url, auth=("local-slurm", "local-slurm-secret"), data={"grant_type": "client_credentials"},
                         timeout=5).status_code == 200

    expired = issuer.mint(client="local-slurm", ttl=-10)
    response = requests.get(f"{stack.api_url}/job-submissions/agent/pending", headers={"Authorization": f"Bearer {expired}"}, timeout=10)
    assert response.status_code == 401
    noperm = issuer.mint(client="noperm-slurm")
    response = requests.get(f"{stack.api_url}/job-submissions/agent/pending", headers={"Authorization": f"Bearer {noperm}"}, timeout=10)
    assert response.status_code == 403


def test_slurmrestd_job_as_alice_completes_and_reaches_slurmdbd(stack: Stack, unique_name: str) -> None:
    job_id = slurm_submit(
        "alice",
        "#!/bin/bash\nid -un\n",
        cwd="/home/alice",
        environment={"PATH": "/usr/bin:/bin", "HOME": "/home/alice"},
        name=unique_name,
        comment=unique_name,
        standard_output=f"/home/alice/{unique_name}-%j.out",
    )
    assert [job["job_id"] for job in slurm_jobs_with_comment(unique_name)] == [job_id]
    job = wait_for_slurm_state(job_id, timeout=60)
    assert job["job_state"] == "COMPLETED", job
    assert job["user_name"] == "alice"
    with open(f"/home/alice/{unique_name}-{job_id}.out") as handle:
        assert handle.read().strip() == "alice"
    assert slurm_job(999_999_999) is None  # unknown id -> error 2017 -> None

    record = wait_for(
        lambda: (r := slurmdb_job(job_id)) and r["state"]["current"] == "COMPLETED" and r,
        timeout=60,
        message=f"slurmdbd record of job {job_id}",
    )
    assert record["user"] == "alice"
    assert record["comment"]["job"] == unique_name  # AccountingStoreFlags=job_comment


def stop_and_check_it_is_gone(services, name: str, url: str) -> None:
    services.stop(name)
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)


def test_stop_and_start_services(stack: Stack, services) -> None:
    kid = requests.get(f"{stack.oidc_url}/protocol/openid-connect/certs", timeout=5).json()["keys"][0]["kid"]
    stop_and_check_it_is_gone(services, "oidc", f"{stack.oidc_url}/.well-known/openid-configuration")
    services.start("oidc")
    assert requests.get(f"{stack.oidc_url}/protocol/openid-connect/certs", timeout=5).json()["keys"][0]["kid"] == kid
    # the API still accepts tokens: the signing key survived the restart
    assert AgentClient(stack).request("GET", "/job-submissions/agent/active").status_code == 200

    stop_and_check_it_is_gone(services, "slurmrestd", f"{stack.slurmrestd_url}/openapi/v3")
    services.start("slurmrestd")
    assert requests.get(f"{stack.slurmrestd_url}/openapi/v3", timeout=5).status_code == 401

    # the same for another leg's slurmrestd (NAME@LEG); the default leg's keeps running
    for leg in set(stack.legs) - {stack.default_leg}:
        url = f"{stack.legs[leg].url}/openapi/v3"
        stop_and_check_it_is_gone(services, f"slurmrestd@{leg}", url)
        assert requests.get(f"{stack.slurmrestd_url}/openapi/v3", timeout=5).status_code == 401
        services.start(f"slurmrestd@{leg}")
        assert requests.get(url, timeout=5).status_code == 401


def leg_versions() -> list:
    """One (leg, API version) pair per version every leg serves, read from stack.env at collection.
    Without a stack, one placeholder whose ``stack`` fixture then fails the test."""
    try:
        legs = get_stack().legs
    except (StackNotUp, KeyError):
        return [pytest.param(None, None, id="stack-not-up")]
    return [pytest.param(leg.name, version, id=f"{leg.name}-{version}")
            for leg in legs.values() for version in leg.api_versions]


@pytest.mark.parametrize(("leg", "api_version"), leg_versions())
def test_every_leg_and_api_version_runs_a_job_as_alice(stack: Stack, slurm_on, leg: str, api_version: str) -> None:
    """A job submitted through that slurmrestd with a token signed by that leg's key runs as
    alice in a host directory seen through the bind mount, completes, and reaches slurmdbd."""
    slurm: SlurmControl = slurm_on(leg, api_version)
    name = unique(f"jgs-smoke-{leg}")
    workdir = Path(f"/home/alice/jgs/{name}")
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", "-p", str(workdir)], check=True)
    job_id = slurm.slurm_submit(
        "alice",
        "#!/bin/bash\nid -un\npwd\n",
        cwd=str(workdir),
        environment={"PATH": "/usr/bin:/bin", "HOME": "/home/alice"},
        name=name,
        comment=name,
        standard_output=str(workdir / "out-%j.txt"),
    )
    job = slurm.wait_for_state(job_id, timeout=60)
    assert state_of(job) == "COMPLETED", job
    assert job["user_name"] == "alice"
    output = workdir / f"out-{job_id}.txt"
    assert output.read_text().split() == ["alice", str(workdir)]
    assert os.stat(output).st_uid == os.stat("/home/alice").st_uid  # written as alice, seen on the host

    record = wait_for(
        lambda: (r := slurm.slurmdb_job(job_id)) and state_of(r) == "COMPLETED" and r,
        timeout=60,
        message=f"slurmdbd record of job {job_id} on leg {leg}",
    )
    assert record["user"] == "alice" and record["cluster"] == stack.legs[leg].cluster
    sacct = slurm.cli("sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "jobid,user,state", check=True)
    assert sacct.stdout.split() == [f"{job_id}|alice|COMPLETED"], sacct
