"""The README's try-out (try-it.sh) on the running stack: the configuration it writes, its demo
submissions, passes of the installed tool, and what it shows afterwards. `try-it.sh up` itself
brings the stack up with one Slurm, which would take the other legs from the rest of the suite, so
this test drives the same steps on the stack that is up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helpers
from tool import SCRIPT

TRY_IT = Path(__file__).resolve().parent / "try_it.py"


def try_it(*args: str) -> str:
    return subprocess.run([sys.executable, str(TRY_IT), *args], check=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL).stdout


def test_the_try_out_config_demo_and_passes_end_as_its_readme_says(stack, tmp_path):
    helpers.AgentClient(stack).drain()
    config = try_it("config", str(tmp_path)).strip()
    check = subprocess.run([str(SCRIPT), "check", "--config", config], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
    assert check.returncode == 0, check.stdout + check.stderr
    try_it("seed", str(tmp_path))

    def shown() -> str:
        passed = subprocess.run([str(SCRIPT), "--once", "--config", config], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        assert passed.returncode == 0, passed.stderr[-2000:]
        text = try_it("show", str(tmp_path))
        return text if ": DONE" in text and ": ABORTED" in text else ""

    text = helpers.wait_for(shown, 90, 3, "the demo's jobs to end")
    assert "== hello: submission" in text and "hello from alice" in text
    assert "== failing: submission" in text and "NonZeroExitCode (exit code 3)" in text
    assert "== refused: submission" in text and ": REJECTED" in text and "--uid is not allowed" in text
