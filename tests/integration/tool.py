"""Runs the installed `jobbergate-sync` console script the way an admin or cron does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from config_files import write_ini, write_secret
from helpers import Stack, wait_for
from jobbergate_sync import SLURM_TOOLS

SCRIPT = Path(sys.executable).parent / "jobbergate-sync"
MODULE = Path(__file__).resolve().parents[2] / "jobbergate_sync.py"
IN_ROOT_MODULE = "/opt/jobbergate-sync/jobbergate_sync.py"
IN_ROOT_TOOLS = "/var/tmp/jgs-tools"  # the tools run with the sbatch backend keep their files here, in the leg's root


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def summary(self) -> dict[str, Any]:
        return [line for line in self.log if line["message"].startswith("pass finished")][-1]


def slurm_bin(root: Path) -> str:
    """Where the leg's Slurm commands are, inside its root (/usr/bin, or /opt/slurm-<version>/bin)."""
    found = [path for path in [*sorted(root.glob("opt/slurm-*/bin")), root / "usr/bin"] if (path / "sbatch").exists()]
    return "/" + str(found[0].relative_to(root))


class Tool:
    """One configured agent instance: its own INI, state directory and lock."""

    def __init__(self, directory: Path, stack: Stack, cluster: str, leg: Optional[str] = None,
                 backend: str = "slurmrestd", **overrides: Any):
        """``leg`` picks the Slurm leg (default: the default leg): its slurmrestd URL, JWT key and
        newest API version; ``slurmrestd__api_version=...`` overrides the version.
        ``backend="sbatch"``: the tool runs inside the leg's root (chroot, as root), where that
        Slurm's own sbatch, squeue, sacct, scancel and sdiag reach the cluster; its directory is then
        moved under the root's /var/tmp/jgs-tools (``directory`` names it), as its INI names the
        files from inside the root."""
        self.leg = stack.leg(leg)
        self.backend = backend
        if backend == "sbatch":
            directory = self.leg.root / IN_ROOT_TOOLS.lstrip("/") / f"{directory.parent.name}-{directory.name}"
            shutil.rmtree(directory, ignore_errors=True)
            module = self.leg.root / IN_ROOT_MODULE.lstrip("/")
            module.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(MODULE, module)
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        secret_file = write_secret(directory / "client_secret", stack.client_secrets[cluster].encode() + b"\n")
        self.settings: dict[str, Any] = {
            "jobbergate.api_url": stack.api_url,
            "jobbergate.timeout": 5,
            "oidc.issuer": stack.oidc_url,
            "oidc.client_id": cluster,
            "oidc.client_secret_file": secret_file,
            "oidc.timeout": 5,
            "slurmrestd.url": self.leg.url,
            "slurmrestd.api_version": self.leg.api_version,
            "slurmrestd.jwt_key_file": self.leg.jwt_key_path,
            "slurmrestd.slurmdbd": "true",
            "slurmrestd.timeout": 5,
            "submit.execution_directory": "/home/{username}/jobbergate",
            "mapper.domains": "example.com",
            "run.state_dir": str(directory / "state"),
            "run.lock_file": str(directory / "run" / "lock"),
            "run.backoff": 0.2,
            "run.retries": 2,
            "run.deadline": 40,
        }
        if backend == "sbatch":
            tools = slurm_bin(self.leg.root)
            self.settings.update({"slurm.backend": "sbatch", "slurmrestd.jwt_key_file": None, "slurm.timeout": 20,
                                  **{f"slurm.{name}": f"{tools}/{name}" for name in SLURM_TOOLS}})
            self.settings.update({key: self.inside(Path(value)) for key, value in self.settings.items()
                                  if key in ("oidc.client_secret_file", "run.state_dir", "run.lock_file")})
        self.settings.update({key.replace("__", "."): value for key, value in overrides.items()})
        self.config = Path(write_ini(directory / "jobbergate-sync.ini", self.settings))

    def inside(self, path: Path) -> str:
        """The path the tool sees for a file of its own: inside the leg's root with the sbatch backend."""
        return "/" + str(path.relative_to(self.leg.root)) if self.backend == "sbatch" else str(path)

    @property
    def journal(self) -> Path:
        return self.directory / "state" / "journal.sqlite3"

    @property
    def token_cache(self) -> Path:
        return self.directory / "state" / "token.json"

    def run(self, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 180) -> Result:
        return self._run(["--once", "--config", self.inside(self.config), *args], env, timeout)

    def check(self, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 120) -> Result:
        """`jobbergate-sync check` with this tool's configuration."""
        return self._run(["check", "--config", self.inside(self.config), *args], env, timeout)

    def _run(self, arguments: list[str], env: Optional[dict[str, str]], timeout: float) -> Result:
        command = [str(SCRIPT), *arguments]
        environment = {key: value for key, value in os.environ.items() if not key.startswith("JOBBERGATE_SYNC_")}
        if self.backend == "sbatch":  # the root's python3 with its Debian packages, and a clean environment
            command = ["/usr/sbin/chroot", str(self.leg.root), "python3", IN_ROOT_MODULE, *arguments]
            environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        environment.update(env or {})
        began = time.monotonic()
        completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout,
                                   stdin=subprocess.DEVNULL, cwd="/")
        return Result(completed.returncode, completed.stdout, completed.stderr, time.monotonic() - began)

    def run_until(self, condition: Callable[[], bool], timeout: float = 150, pause: float = 2.0) -> list[Result]:
        """Passes, as cron would run them, until `condition()` holds."""
        results: list[Result] = []

        def one_pass() -> bool:
            results.append(self.run())
            assert results[-1].returncode in (0, 1), results[-1].stderr[-3000:]
            return condition()

        try:
            wait_for(one_pass, timeout, pause, "the condition")
        except TimeoutError as exc:
            raise AssertionError(f"{exc} after {len(results)} passes; last log:\n{results[-1].stderr[-3000:]}") from None
        return results

