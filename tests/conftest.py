from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import responses

import jobbergate_sync
import properties  # noqa: F401  (registers and loads the Hypothesis profiles)
from config_files import write_ini, write_secret
from fakes import API, CLIENT_ID, CLIENT_SECRET, ISSUER, JWT_KEY, SLURM, Crash, FakeIssuer, FakeJobbergate, FakeSlurm, run


def _job_user() -> pwd.struct_passwd:
    """As root (CI), jobs run as the real unprivileged account 'nobody', so the fork-and-drop path
    is exercised for real; otherwise as the current user."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())


@pytest.fixture
def job_user() -> pwd.struct_passwd:
    return _job_user()


@pytest.fixture
def exec_root(job_user: pwd.struct_passwd) -> Iterator[Path]:
    """A directory the job user owns and can reach (pytest's tmp_path is 0700 root-only)."""
    path = Path(tempfile.mkdtemp(prefix="jgs-exec-"))
    path.chmod(0o755)
    os.chown(path, job_user.pw_uid, job_user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config_file(tmp_path: Path, job_user: pwd.struct_passwd, exec_root: Path, monkeypatch: pytest.MonkeyPatch):
    """Writes the INI for a test; keyword overrides are 'section.key': value."""
    for name in list(os.environ):
        if name.startswith(jobbergate_sync.ENV_PREFIX):
            monkeypatch.delenv(name)

    def make(**overrides: Any) -> str:
        settings = {
            "jobbergate.api_url": API,
            "oidc.issuer": ISSUER,
            "oidc.client_id": CLIENT_ID,
            "oidc.client_secret_file": write_secret(tmp_path / "client_secret", CLIENT_SECRET.encode() + b"\n"),
            "slurmrestd.url": SLURM,
            "slurmrestd.jwt_key_file": write_secret(tmp_path / "jwt.key", JWT_KEY),
            "slurmrestd.query_user": "slurm",
            "submit.execution_directory": f"{exec_root}/{{username}}",
            "mapper.min_uid": 1000 if job_user.pw_uid >= 1000 else 1,
            "mapper.domains": "example.com",
            "run.state_dir": str(tmp_path / "state"),
            "run.lock_file": str(tmp_path / "run" / "lock"),
            "run.backoff": 0,
            "run.retries": 2,
        }
        settings.update({key.replace("__", "."): value for key, value in overrides.items()})
        return write_ini(tmp_path / "jobbergate-sync.ini", settings)

    return make


class Stack:
    """The fakes; a submission and a job added without an owner are the job user's (the one the
    mapper maps a submission's owner to), so that the job is its submission's owner's."""

    def __init__(self, rsps: responses.RequestsMock, owner: pwd.struct_passwd):
        self.rsps = rsps
        self.issuer = FakeIssuer(rsps)
        self.api = FakeJobbergate(rsps, self.issuer)
        self.api.default_email = f"{owner.pw_name}@example.com"
        self.slurm = FakeSlurm(rsps, JWT_KEY)
        self.slurm.default_user = owner.pw_name


@pytest.fixture
def stack(job_user: pwd.struct_passwd) -> Iterator[Stack]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield Stack(rsps, job_user)


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    """crash_at(point, config): one pass that dies at that crash point, as if SIGKILLed there (it
    must get there); passes after it run to their end."""
    def crashed_pass(point: jobbergate_sync.CrashPoint, config: str) -> None:
        def crash(reached: jobbergate_sync.CrashPoint) -> None:
            if reached == point:
                raise Crash(point)

        monkeypatch.setattr(jobbergate_sync, "crash_point", crash)
        with pytest.raises(Crash):
            run(config)
        monkeypatch.setattr(jobbergate_sync, "crash_point", lambda reached: None)

    return crashed_pass


@pytest.fixture
def email(job_user: pwd.struct_passwd) -> str:
    return f"{job_user.pw_name}@example.com"
