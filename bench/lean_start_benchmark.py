#!/usr/bin/env python3
"""Prints how long a no-op pass (nothing pending, nothing active) of `jobbergate-sync` takes as a
whole process, against `python -c "import requests, click"` in the same venv. Figures, not asserts.

    .venv/bin/python bench/lean_start_benchmark.py [--rounds 21]
    .venv/bin/python bench/lean_start_benchmark.py --stack

By default the pass talks to a stand-in API served by this script on loopback (an empty page for
each list, 202 for the health ping, a token once), so the figure is the tool's own start-up and
work; --stack uses the integration stack's API as a cluster with nothing pending or active. The
commands alternate, so that a busy machine slows them alike; medians and their ratios are printed,
with the module's bytecode (as an installed package has it) and without it (PYTHONDONTWRITEBYTECODE
with a source checkout: the module is compiled on every run). A first pass, not counted, caches the
API token as every later pass of a timer finds it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import provenance  # noqa: E402
from config_files import write_ini, write_secret  # noqa: E402

EMPTY_PAGE = json.dumps({"items": [], "pages": 0, "total": 0, "page": 1, "size": 100}).encode()
TOKEN = json.dumps({"access_token": "stand-in-token", "expires_in": 3600, "token_type": "Bearer"}).encode()


class StandIn(BaseHTTPRequestHandler):
    """The API and issuer routes a no-op pass uses."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *_: object) -> None:
        pass

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.reply(200, EMPTY_PAGE)

    def do_PUT(self) -> None:  # noqa: N802
        self.reply(202, b"{}")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply(200, TOKEN)


def stand_in_config(directory: Path) -> Path:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    (directory / "state").mkdir(mode=0o700)
    return Path(write_ini(directory / "jobbergate-sync.ini", {
        "jobbergate.api_url": f"{base}/jobbergate", "oidc.issuer": f"{base}/realms/stand-in",
        "oidc.client_id": "stand-in", "oidc.client_secret_file": write_secret(directory / "secret", b"stand-in\n"),
        "slurmrestd.url": "http://127.0.0.1:9", "slurmrestd.jwt_key_file": write_secret(directory / "key", b"k" * 32),
        "run.state_dir": str(directory / "state"), "run.lock_file": str(directory / "lock"),
        "run.role": "always"}))  # no slurmrestd here to ask which head node is in charge


def stack_config(directory: Path) -> Path:
    import helpers
    from tool import Tool

    stack = helpers.get_stack().check()
    for client in (stack.client_id, "other-slurm"):
        agent = helpers.AgentClient(stack, client)
        if not agent.pending() and not agent.active():
            return Tool(directory, stack, client).config
    raise SystemExit("no agent client of the stack is idle (nothing pending or active): nothing measured")


def wall(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--stack", action="store_true", help="the integration stack's API instead of a stand-in")
    arguments = parser.parse_args()
    provenance.print_header()
    python = sys.executable
    with tempfile.TemporaryDirectory() as directory:
        config = stack_config(Path(directory)) if arguments.stack else stand_in_config(Path(directory))
        no_op = [python, "-c", "import sys, jobbergate_sync; sys.exit(jobbergate_sync.main(['--once', '--config', "
                 f"{str(config)!r}]))"]
        baseline = [python, "-c", "import requests, click"]
        compiled = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        uncompiled = {**compiled, "PYTHONDONTWRITEBYTECODE": "1"}
        rows = []
        for text, env in (("no-op pass, module bytecode present", compiled),
                          ("no-op pass, PYTHONDONTWRITEBYTECODE=1", uncompiled)):
            shutil.rmtree(ROOT / "__pycache__", ignore_errors=True)
            wall(no_op, env)  # the token cached (and, with bytecode, the bytecode written)
            passes, imports = [], []
            for _ in range(arguments.rounds):
                imports.append(wall(baseline, compiled))
                passes.append(wall(no_op, env))
            rows.append((text, statistics.median(passes), statistics.median(imports)))
    print(f"no-op pass against {'the stack' if arguments.stack else 'a stand-in'} API, {arguments.rounds} rounds, "
          'medians; ratio to python -c "import requests, click" measured alternately with it')
    for text, seconds, baseline_seconds in rows:
        print(f"{text:<40} {seconds * 1000:>6.0f} ms   import baseline {baseline_seconds * 1000:>4.0f} ms"
              f"   ratio {seconds / baseline_seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
