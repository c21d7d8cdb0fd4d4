"""The try-out of try-it.sh: a configuration for the local stack, demo submissions, where to look.

    try_it.py config DIR    write DIR/jobbergate-sync.ini and DIR/client_secret for the running stack
    try_it.py seed DIR      create the demo submissions as alice through the API; their ids go to DIR/demo.json
    try_it.py show DIR      what the API says of them, the Slurm job and the files of each

Only `requests` is needed (the tool's own dependency); the stack is described by its stack.env.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: config_files
import helpers  # noqa: E402
from config_files import write_ini, write_secret  # noqa: E402

DEMO_SCRIPTS = {
    "hello": b"#!/bin/bash\n#SBATCH --job-name=demo-hello\n#SBATCH --time=2\n"
             b"#SBATCH --output=hello-%j.out\necho \"hello from $(id -un) on $(hostname) in $(pwd)\"\ncat greeting.txt\n",
    "failing": b"#!/bin/bash\n#SBATCH --job-name=demo-failing\necho about to fail\nexit 3\n",
    "refused": b"#!/bin/bash\n#SBATCH --uid=0\nid\n",
}


def write_config(directory: Path) -> Path:
    stack = helpers.get_stack()
    leg = stack.leg()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    secret = write_secret(directory / "client_secret", stack.client_secret.encode() + b"\n")
    return Path(write_ini(directory / "jobbergate-sync.ini", {
        "jobbergate.api_url": stack.api_url,
        "oidc.issuer": stack.oidc_url,
        "oidc.client_id": stack.client_id,
        "oidc.client_secret_file": secret,
        "slurmrestd.url": leg.url,
        "slurmrestd.jwt_key_file": leg.jwt_key_path,
        "submit.execution_directory": "/home/{username}/jobbergate-demo",
        "mapper.domains": "example.com",
        "run.state_dir": str(directory / "state"),
        "run.lock_file": str(directory / "state" / "lock"),
    }))


def seed(directory: Path) -> None:
    alice = helpers.UserClient(helpers.get_stack(), "alice")
    demo = {}
    for name, script in DEMO_SCRIPTS.items():
        files = {f"{name}.sh": script, "greeting.txt": b"a supporting file, downloaded beside the script\n"}
        job_script = alice.create_job_script(helpers.unique(f"demo-{name}"), files, entrypoint=f"{name}.sh")
        submission = alice.create_submission(job_script["id"], helpers.unique(f"demo-{name}"))
        demo[name] = submission["id"]
        print(f"created submission {submission['id']} ({name}) as alice, status {submission['status']}")
    (directory / "demo.json").write_text(json.dumps(demo))


def show(directory: Path) -> None:
    stack = helpers.get_stack()
    alice = helpers.UserClient(stack, "alice")
    for name, submission_id in json.loads((directory / "demo.json").read_text()).items():
        current = alice.get_submission(submission_id)
        print(f"\n== {name}: submission {submission_id}: {current['status']}"
              f" (Slurm job {current.get('slurm_job_id')}, state {current.get('slurm_job_state')})")
        if current["status"] in ("ABORTED", "REJECTED") and current.get("report_message"):
            print(f"   message for its owner: {current['report_message']}")
        print(f"   the API's view: GET {stack.api_url}/job-submissions/{submission_id}")
        job_id = current.get("slurm_job_id")
        if job_id:
            print(f"   the Slurm job:  bash {stack.stack_sh} slurm {stack.default_leg} scontrol show job {job_id}")
            workdir = current.get("execution_directory") or "/home/alice/jobbergate-demo"
            print(f"   its files:      ls -l {workdir}")
            for output in sorted(Path(workdir).glob(f"*{job_id}*.out")):
                print(f"   {output}: {output.read_text().strip()}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("config", "seed", "show"):
        print(__doc__, file=sys.stderr)
        return 64
    directory = Path(argv[1]).resolve()
    {"config": lambda d: print(write_config(d)), "seed": seed, "show": show}[argv[0]](directory)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
