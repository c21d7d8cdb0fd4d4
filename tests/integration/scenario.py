"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any, Optional

from helpers import unique
from jobbergate_sync import submission_tag

# submission id -> when its job script was created: part of the tag, which agent/pending gives with the
# job script but a submission's own answers do not
script_created_at: dict[int, str] = {}


def new_submission(user: Any, files: dict[str, bytes], *, entrypoint: Optional[str] = None,
                   sbatch_arguments: Optional[list[str]] = None, execution_directory: Optional[str] = None,
                   client_id: str = "local-slurm") -> dict[str, Any]:
    """A job script with `files` (the first one is the entrypoint) and one submission of it."""
    script = user.create_job_script(unique("script"), files, entrypoint=entrypoint or next(iter(files)))
    submission = user.create_submission(script["id"], unique("sub"), client_id=client_id,
                                        execution_directory=execution_directory, sbatch_arguments=sbatch_arguments)
    script_created_at[submission["id"]] = script["created_at"]
    return submission


def status_of(user: Any, submission: dict[str, Any]) -> str:
    return user.get_submission(submission["id"])["status"]


def tag(submission: dict[str, Any], cluster: str = "local-slurm") -> str:
    """The tag of a submission made by new_submission."""
    return submission_tag(cluster, submission["id"], script_created_at[submission["id"]])


def job_for(slurm: Any, submission: dict[str, Any], cluster: str = "local-slurm") -> list[dict[str, Any]]:
    """Every Slurm job slurmctld holds that carries the submission's tag."""
    return slurm.slurm_jobs_with_comment(tag(submission, cluster))
