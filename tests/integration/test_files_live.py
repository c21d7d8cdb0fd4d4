"""Job files on the real stack: written by alice's own writer with the configured mode, never over a file
of hers the tool did not write, never under a hidden name."""

from __future__ import annotations

import os
import pwd
import stat

from scenario import job_for, new_submission, unique


def test_files_are_private_to_their_owner_and_her_own_files_are_left_alone(alice, tool, slurm):
    workdir = f"/home/alice/jgs/{unique('files')}"
    first = new_submission(alice, {"job.sh": b"#!/bin/bash\n#SBATCH --time=1\ntrue\n", "input.dat": b"first\n"},
                           execution_directory=workdir)
    assert tool.run().returncode == 0
    assert alice.get_submission(first["id"])["status"] == "SUBMITTED"
    alice_uid = pwd.getpwnam("alice").pw_uid
    for path, mode in ((f"{workdir}/job.sh", 0o600), (f"{workdir}/input.dat", 0o600), (workdir, 0o700)):
        info = os.stat(path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (alice_uid, mode), path

    with open(f"{workdir}/input.dat", "ab") as handle:  # alice edits the file the tool wrote
        handle.write(b"alice's own line\n")
    second = new_submission(alice, {"job.sh": b"#!/bin/bash\n#SBATCH --time=1\ntrue\n", "input.dat": b"second\n"},
                            execution_directory=workdir)
    hidden = new_submission(alice, {"job.sh": b"#!/bin/bash\ntrue\n", ".bashrc": b"echo owned\n"},
                            execution_directory=workdir)
    assert tool.run().returncode == 0
    assert "input.dat exists and jobbergate-sync did not write it" in alice.get_submission(second["id"])["report_message"]
    assert "names start with '.' (.bashrc)" in alice.get_submission(hidden["id"])["report_message"]
    assert open(f"{workdir}/input.dat", "rb").read() == b"first\nalice's own line\n"
    assert not os.path.exists(f"{workdir}/.bashrc")
    assert job_for(slurm, second) == [] and job_for(slurm, hidden) == []
