"""Hostile input on the real stack: what a user writes is a rejection of their own submission, never
the end of every pass; and a state directory another account made first stops the tool, named."""

from __future__ import annotations

import os
import pwd
import shutil

from scenario import new_submission, status_of

GOOD_SCRIPT = b"#!/bin/bash\n#SBATCH --time=00:01:00\necho fine\n"


def test_poison_numbers_and_times_reject_their_own_submission_and_the_queue_goes_on(alice, tool, slurm):
    huge = new_submission(alice, {"job.sh": b"#!/bin/bash\n#SBATCH --nodes=" + b"9" * 5000 + b"\necho hi\n"})
    never = new_submission(alice, {"job.sh": GOOD_SCRIPT}, sbatch_arguments=["--begin=now-9999999999999days"])
    good = new_submission(alice, {"job.sh": GOOD_SCRIPT}, execution_directory="/home/alice/jgs-hostile")

    result = tool.run()

    assert result.returncode == 0, result.stderr[-3000:]
    assert status_of(alice, huge) == "REJECTED" and status_of(alice, never) == "REJECTED"
    assert "--nodes expects N or MIN-MAX" in alice.get_submission(huge["id"])["report_message"]
    assert "--begin" in alice.get_submission(never["id"])["report_message"]
    current = alice.get_submission(good["id"])
    # submitted; a job this short may already have ended, and been reported so, within the same pass
    assert current["status"] in ("SUBMITTED", "DONE"), current["report_message"]
    assert slurm.slurm_job(current["slurm_job_id"])["user_name"] == "alice"
    assert result.summary()["exit_code"] == 0


def test_a_state_directory_another_account_made_first_stops_every_pass_with_78(alice, tool):
    state = tool.directory / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(mode=0o700)
    os.chown(state, pwd.getpwnam("bob").pw_uid, -1)
    sub = new_submission(alice, {"job.sh": GOOD_SCRIPT}, execution_directory="/home/alice/jgs-hostile")

    result = tool.run()

    assert result.returncode == 78, result.stderr[-3000:]
    assert any(f"[run] state_dir {state} is owned by bob" in line["message"] for line in result.log)
    assert status_of(alice, sub) == "CREATED"
    shutil.rmtree(state)  # root's own again: the next pass creates it and submits
    assert tool.run().returncode == 0
    current = alice.get_submission(sub["id"])
    assert current["slurm_job_id"] and current["status"] in ("SUBMITTED", "DONE", "ABORTED"), current  # it reached Slurm
