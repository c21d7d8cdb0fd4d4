"""Stateful stand-ins for the OIDC issuer, jobbergate-api and slurmrestd, served through `responses`.

They follow what jobbergate-api 5.12 and slurmrestd do (the agent routes' status rules and their
400/409 answers, pagination, slurmrestd v0.0.38 shapes and error bodies, as the integration suite
sees them from the real services and tests/fixtures/slurmrestd records them) closely enough for unit
tests; the integration suite runs the real services.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlparse

import jwt
import requests
import responses

from jobbergate_sync import api_minor, main, submission_tag, unwrap_number

API = "http://api.test/jobbergate"
ISSUER = "http://oidc.test/realms/jobbergate-local"
SLURM = "http://slurm.test:6820"
INFLUXDB = "http://influx.test:8086"
CLIENT_ID = "test-cluster"
CLIENT_SECRET = "client-secret-value-42"
SCRIPT_CREATED_AT = "2026-11-26T16:08:48.944717Z"  # every fake job script's creation time, as the API writes it


def tag(submission_id: int, cluster: str = CLIENT_ID, script_created_at: str = SCRIPT_CREATED_AT) -> str:
    """The tag the tool puts in the Slurm job of a fake submission."""
    return submission_tag(cluster, submission_id, script_created_at)
JWT_KEY = b"0123456789abcdef0123456789abcdef"

# What each agent route of the API accepts (besides jobbergate:admin, except for the cluster ping).
AGENT_PERMISSIONS = ["jobbergate:clusters:update", "jobbergate:job-scripts:read", "jobbergate:job-submissions:read",
                     "jobbergate:job-submissions:update"]
ROUTE_PERMISSIONS = {"pending": "jobbergate:job-submissions:read", "active": "jobbergate:job-submissions:read",
                     "get": "jobbergate:job-submissions:read", "file": "jobbergate:job-scripts:read",
                     "submitted": "jobbergate:job-submissions:update", "rejected": "jobbergate:job-submissions:update",
                     "update": "jobbergate:job-submissions:update", "health": "jobbergate:clusters:update",
                     "metrics_marks": "jobbergate:job-submissions:read", "metrics_put": "jobbergate:job-submissions:update"}
METRICS_MAX_ROWS = 2340  # the API's limit per PUT agent/metrics

DONE_STATES = {"COMPLETED"}
ABORT_STATES = {"BOOT_FAIL", "CANCELLED", "DEADLINE", "FAILED", "NODE_FAIL", "PREEMPTED", "SPECIAL_EXIT",
                "TIMEOUT", "UNKNOWN"}


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slurmrestd"


def capture(name: str) -> dict[str, Any]:
    """A recorded slurmrestd exchange (tests/fixtures/slurmrestd/NAME)."""
    with open(FIXTURES / name, encoding="utf-8") as handle:
        return json.load(handle)


def run(config: str, *extra: str) -> int:
    """One pass of the tool, as cron runs it."""
    return main(["--once", "--config", config, *extra])


def check_lines(capsys: Any, config: str, *extra: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """`jobbergate-sync check`'s exit code and its lines: what -> (ok/FAIL/skip, detail)."""
    code = main(["check", "--config", config, *extra])
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        status, _, rest = line.partition(" ")
        what, _, detail = rest.strip().partition(": ")
        lines[what] = (status, detail)
    return code, lines


def expand_task_ranges(text: str) -> list[int]:
    """Task ids of an array_task_string such as "2-5,7"."""
    tasks: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        tasks += range(int(first), int(last or first) + 1)
    return tasks


def journal_rows(config_dir: Path) -> list[tuple]:
    with sqlite3.connect(config_dir / "state" / "journal.sqlite3") as db:
        return db.execute("SELECT submission_id, slurm_job_id, reported, last_state FROM submissions").fetchall()


class Crash(BaseException):
    """Stands for SIGKILL inside the test process: nothing after the crash point runs."""


def _json(status: int, body: Any, headers: Optional[dict] = None) -> tuple:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body)


def _queued(answers: dict[str, list[Any]], route: str, error_body: Any) -> Optional[tuple]:
    """The next answer queued for `route` in a fake's `answers`, the one way every fake injects
    failures and odd replies: an int status (with the fake's usual error body), a (status, body)
    pair (a str body is sent as it is, anything else as JSON), or an exception (the connection
    fails). None when nothing is queued."""
    if not answers.get(route):
        return None
    answer = answers[route].pop(0)
    if isinstance(answer, Exception):
        return 0, {}, answer
    if isinstance(answer, int):
        return _json(answer, error_body)
    status, body = answer
    return (status, {"Content-Type": "text/html"}, body) if isinstance(body, str) else _json(status, body)


class FakeIssuer:
    def __init__(self, rsps: responses.RequestsMock, ttl: int = 300):
        self.ttl = ttl
        self.issued: list[str] = []
        self.permissions = list(AGENT_PERMISSIONS)  # the token's top-level "permissions" claim
        self.answers: dict[str, list[Any]] = {}  # queued answers of the "token" route (see _queued)
        rsps.add_callback(responses.POST, f"{ISSUER}/protocol/openid-connect/token", callback=self._token)

    def _token(self, request: requests.PreparedRequest) -> tuple:
        queued = _queued(self.answers, "token", {"error": "server_error"})
        if queued:
            return queued
        form = parse_qs(request.body)
        if form.get("client_id") != [CLIENT_ID] or form.get("client_secret") != [CLIENT_SECRET]:
            return _json(401, {"error": "unauthorized_client", "error_description": "Invalid client secret"})
        now = int(time.time())
        token = jwt.encode({"sub": "svc", "azp": CLIENT_ID, "iat": now, "exp": now + self.ttl, "n": len(self.issued),
                            "permissions": self.permissions},
                           "issuer-signing-key-of-32-bytes!!", algorithm="HS256")
        self.issued.append(token)
        return _json(200, {"access_token": token, "expires_in": self.ttl, "token_type": "Bearer"})


class FakeJobbergate:
    """Submissions, files and the agent routes, with the real API's status rules."""

    def __init__(self, rsps: responses.RequestsMock, issuer: FakeIssuer):
        self.issuer = issuer
        self.default_email = "user@example.com"  # the owner of a submission added without one
        self.submissions: dict[int, dict[str, Any]] = {}
        self.files: dict[tuple[int, str], bytes] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.health: list[int] = []
        self.answers: dict[str, list[Any]] = {}  # queued answers per route name below (see _queued)
        self.revoked: set[str] = set()
        self.reject_all_tokens = False
        self.before_submitted: Optional[Callable[[dict], None]] = None  # e.g. another agent acting first
        self.submitted_reply_after_processing: Any = None  # a lost answer: an exception, or 400 (a repeat)
        self.metrics: dict[tuple[int, int, str, int, int], tuple] = {}  # (submission, time, host, step, task) -> row
        self.metrics_puts: list[tuple[int, int]] = []  # (submission id, rows) of each accepted PUT agent/metrics
        routes = [
            (responses.GET, r"/job-submissions/agent/pending", self._pending, "pending"),
            (responses.GET, r"/job-submissions/agent/active", self._active, "active"),
            (responses.GET, r"/job-scripts/(\d+)/upload/(.+)", self._file, "file"),
            (responses.POST, r"/job-submissions/agent/submitted", self._submitted, "submitted"),
            (responses.POST, r"/job-submissions/agent/rejected", self._rejected, "rejected"),
            (responses.PUT, r"/job-submissions/agent/(\d+)", self._update, "update"),
            (responses.GET, r"/job-submissions/(\d+)", self._get, "get"),
            (responses.PUT, r"/clusters/status", self._health, "health"),
            (responses.GET, r"/job-submissions/agent/metrics/(\d+)", self._metrics_marks, "metrics_marks"),
            (responses.PUT, r"/job-submissions/agent/metrics/(\d+)", self._metrics_put, "metrics_put"),
        ]
        for method, pattern, handler, name in routes:
            rsps.add_callback(method, re.compile(re.escape(API) + pattern + r"(\?.*)?$"),
                              callback=self._guard(name, pattern, handler))
        outside_mount = re.compile(re.escape(API[:-len(urlparse(API).path)]) + r"/(?!jobbergate/).*")
        for method in (responses.GET, responses.POST, responses.PUT):  # FastAPI's answer to an unknown path
            rsps.add_callback(method, outside_mount, callback=lambda request: _json(404, {"detail": "Not Found"}))

    def add_submission(self, submission_id: int, files: Optional[dict[str, bytes]] = None, *,
                       entrypoint: str = "job.sh", email: Optional[str] = None, name: Optional[str] = None,
                       status: str = "CREATED", sbatch_arguments: Optional[list[str]] = None,
                       execution_directory: Optional[str] = None, slurm_job_id: Optional[int] = None,
                       script_id: Optional[int] = None, script_created_at: str = SCRIPT_CREATED_AT) -> dict:
        """script_id: the job script's id (default: one script per submission); submissions given
        the same id share that script's files, as a sweep of one job script does."""
        files = files if files is not None else {"job.sh": b"#!/bin/bash\necho hello\n"}
        email = email or self.default_email
        script_id = script_id if script_id is not None else 1000 + submission_id
        for filename, content in files.items():
            self.files[(script_id, filename)] = content
        submission = {
            "id": submission_id, "name": name or f"sub-{submission_id}", "owner_email": email, "status": status,
            "client_id": CLIENT_ID, "slurm_job_id": slurm_job_id, "execution_parameters": {},
            "execution_directory": execution_directory, "sbatch_arguments": sbatch_arguments,
            "slurm_job_state": None, "report_message": None, "slurm_job_info": None,
            "job_script": {"id": script_id, "name": "script", "owner_email": email, "created_at": script_created_at, "files": [
                {"parent_id": script_id, "filename": filename,
                 "file_type": "ENTRYPOINT" if filename == entrypoint else "SUPPORT"} for filename in files]},
        }
        self.submissions[submission_id] = submission
        return submission

    def status(self, submission_id: int) -> str:
        return self.submissions[submission_id]["status"]

    def called(self, name: str) -> list[Any]:
        return [body for call, _, body in self.calls if call == name]

    def _guard(self, name: str, pattern: str, handler: Any) -> Any:
        def callback(request: requests.PreparedRequest) -> tuple:
            path = urlparse(request.url).path[len(urlparse(API).path):]
            body = request.body if name == "metrics_put" else json.loads(request.body) if request.body else None
            self.calls.append((name, request.url, body))
            token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
            if token not in self.issuer.issued or token in self.revoked or self.reject_all_tokens:
                return _json(401, {"detail": "Not authenticated"})
            granted = jwt.decode(token, options={"verify_signature": False})["permissions"]
            if ROUTE_PERMISSIONS[name] not in granted and (name == "health" or "jobbergate:admin" not in granted):
                return _json(403, {"detail": "Not authorized"})
            queued = _queued(self.answers, name, {"detail": "injected failure"})
            if queued:
                return queued
            match = re.fullmatch(pattern, path)
            # looked up per call, so a test may wrap it
            return getattr(self, handler.__name__)(request, body, *match.groups())

        return callback

    def _page(self, request: requests.PreparedRequest, items: list[dict]) -> tuple:
        query = parse_qs(urlparse(request.url).query)
        page, size = int(query.get("page", ["1"])[0]), int(query.get("size", ["50"])[0])
        if size > 100:
            return _json(422, {"detail": [{"type": "less_than_equal", "loc": ["query", "size"]}]})
        pages = (len(items) + size - 1) // size
        chunk = items[(page - 1) * size: page * size]
        return _json(200, {"items": chunk, "total": len(items), "page": page, "size": size, "pages": pages})

    def _pending(self, request: requests.PreparedRequest, body: Any) -> tuple:
        items = [{key: value for key, value in sub.items() if value is not None and key not in ("status", "slurm_job_id")}
                 for sub in self.submissions.values() if sub["status"] == "CREATED"]
        return self._page(request, items)

    def _active(self, request: requests.PreparedRequest, body: Any) -> tuple:
        items = [{key: sub[key] for key in ("id", "name", "status", "slurm_job_id") if sub[key] is not None}
                 for sub in self.submissions.values() if sub["status"] in ("SUBMITTED", "CANCELLED")]
        return self._page(request, items)

    def _file(self, request: requests.PreparedRequest, body: Any, script_id: str, filename: str) -> tuple:
        content = self.files.get((int(script_id), requests.utils.unquote(filename)))
        if content is None:
            return _json(404, {"detail": f"job_script_files row not found by parent_id={script_id}, filename='{filename}'"})
        return 200, {"Content-Type": "text/plain; charset=utf-8", "filename": filename}, content

    def _submitted(self, request: requests.PreparedRequest, body: Any) -> tuple:
        sub = self.submissions.get(body["id"])
        if sub is None:
            return _json(404, {"detail": f"job_submissions entry was not found by locator={body['id']}"})
        if self.before_submitted:
            self.before_submitted(sub)
        if sub["status"] not in ("CREATED", "CANCELLED"):
            return _json(400, {"detail": "Only CREATED Job Submissions can be marked as SUBMITTED"})
        if body.get("slurm_job_state") not in DONE_STATES | ABORT_STATES | {"PENDING", "RUNNING", "COMPLETING"}:
            return _json(422, {"detail": [{"type": "enum", "loc": ["body", "slurm_job_state"]}]})
        sub.update(slurm_job_id=body["slurm_job_id"], slurm_job_state=body["slurm_job_state"],
                   slurm_job_info=body["slurm_job_info"], report_message=body.get("slurm_job_state_reason"))
        if sub["status"] == "CREATED":
            sub["status"] = "SUBMITTED"
        reply, self.submitted_reply_after_processing = self.submitted_reply_after_processing, None
        if isinstance(reply, Exception):
            return 0, {}, reply
        if reply == 400:
            return _json(400, {"detail": "Only CREATED Job Submissions can be marked as SUBMITTED"})
        return 202, {}, ""

    def _rejected(self, request: requests.PreparedRequest, body: Any) -> tuple:
        sub = self.submissions[body["id"]]
        if sub["status"] != "CREATED":
            return _json(400, {"detail": "Only CREATED Job Submissions can be marked as REJECTED"})
        sub.update(status="REJECTED", report_message=body["report_message"])
        return 202, {}, ""

    def _update(self, request: requests.PreparedRequest, body: Any, submission_id: str) -> tuple:
        sub = self.submissions[int(submission_id)]
        if sub["status"] not in ("SUBMITTED", "CANCELLED"):
            return _json(400, {"detail": f"Only SUBMITTED or CANCELLED jobs may be updated by the agent, got {sub['status']}"})
        if body.get("slurm_job_id") != sub["slurm_job_id"]:
            return _json(409, {"detail": "Update slurm job id does not match the job id on record"})
        state = body["slurm_job_state"]
        sub.update(slurm_job_state=state, slurm_job_info=body["slurm_job_info"])
        if state in DONE_STATES:
            sub["status"] = "DONE"
        elif state in ABORT_STATES:
            sub.update(status="ABORTED", report_message=body.get("slurm_job_state_reason"))
        return 202, {}, ""

    def _get(self, request: requests.PreparedRequest, body: Any, submission_id: str) -> tuple:
        sub = self.submissions.get(int(submission_id))
        if sub is None:
            return _json(404, {"detail": "not found"})
        return _json(200, sub)

    def _metrics_marks(self, request: requests.PreparedRequest, body: Any, submission_id: str) -> tuple:
        newest: dict[tuple[str, int, int], int] = {}
        for (sub, sample_time, host, step, task) in self.metrics:
            if sub == int(submission_id):
                newest[(host, step, task)] = max(newest.get((host, step, task), sample_time), sample_time)
        return _json(200, {"job_submission_id": int(submission_id), "max_times": [
            {"max_time": max_time, "node_host": host, "step": step, "task": task}
            for (host, step, task), max_time in newest.items()]})

    def _metrics_put(self, request: requests.PreparedRequest, body: bytes, submission_id: str) -> tuple:
        """The API's rules: 14-column rows, at most 2,340, cast to their types; one duplicate row
        (primary key time, submission, host, step, task) refuses the whole upload."""
        import msgpack
        sub = self.submissions.get(int(submission_id))
        if sub is None:
            return _json(404, {"detail": f"job_submissions entry was not found by locator={submission_id}"})
        rows = msgpack.unpackb(body)
        if not isinstance(rows, list) or any(not isinstance(row, list) or len(row) != 14 for row in rows):
            return _json(400, {"detail": "Invalid data format"})
        if len(rows) > METRICS_MAX_ROWS:
            return _json(400, {"detail": f"The maximum number of elements has been exceeded. Maximum is "
                                         f"{METRICS_MAX_ROWS + 1}, received {len(rows)}"})
        casts = (int, str, int, int, float, float, float, int, float, int, int, int, int, int)
        typed = [tuple(cast(value) for cast, value in zip(casts, row)) for row in rows]
        keys = [(int(submission_id), row[0], row[1], row[2], row[3]) for row in typed]
        if sub["slurm_job_id"] is None or len(set(keys)) != len(keys) or any(key in self.metrics for key in keys):
            return _json(400, {"detail": "Failed to insert metrics"})
        self.metrics.update(zip(keys, typed))
        self.metrics_puts.append((int(submission_id), len(rows)))
        return 204, {}, ""

    def _health(self, request: requests.PreparedRequest, body: Any) -> tuple:
        self.health.append(int(parse_qs(urlparse(request.url).query)["interval"][0]))
        return 202, {}, ""


class FakeSlurm:
    """slurmrestd v0.0.38 (Slurm 22.05) shapes: job ids, string job_state, 500 + error 2017 for gone jobs.
    GET jobs?update_time= answers as slurmctld does: nothing when no job changed since (304 on v0.0.38,
    200 and a warning later), else every job; GET jobs/state (v0.0.40 on) as Slurm 24.11/25.11 do."""

    def __init__(self, rsps: responses.RequestsMock, jwt_key: bytes, version: str = "v0.0.38"):
        self.jwt_key = jwt_key
        self.version = version
        self.default_user = "alice"  # the owner of a job added without one
        self.jobs: dict[int, dict[str, Any]] = {}
        self.accounting: dict[int, dict[str, Any]] = {}
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[tuple[int, str]] = []
        self.requests: list[tuple[str, str, dict]] = []
        self.next_id = 100
        self.submit_lock = threading.Lock()  # the tool's workers submit side by side
        # Queued answers per route ("submit", "list", "get", "delete", "dbd", ...; see _queued).
        self.answers: dict[str, list[Any]] = {}
        self.down = False
        # A token slurmctld refuses: 22.05's answer (500 + 5005); from 25.11 it may be 401 or 511.
        self.refused_token_answer: tuple = _json(500, {"errors": [{"error_code": 5005,
                                                                   "error": "Zero Bytes were transmitted or received"}]})
        self.serves_slurmdbd = False  # whether /openapi/v3 lists /slurmdb/ paths
        self.serves_state_query = api_minor(version) >= 40  # whether GET jobs/state exists (Slurm 24.05 on)
        # slurmctld's last_job_update: when a change to `jobs` was first seen (tests edit jobs in place)
        self.last_job_update = 0.0
        self._jobs_seen = ""
        base = re.escape(f"{SLURM}/slurm/{version}")
        rsps.add_callback(responses.POST, re.compile(base + r"/job/submit$"), callback=self._wrap("submit"))
        rsps.add_callback(responses.GET, re.compile(base + r"/jobs(\?.*)?$"), callback=self._wrap("list"))
        rsps.add_callback(responses.GET, re.compile(base + r"/jobs/state/?(\?.*)?$"), callback=self._wrap("state"))
        rsps.add_callback(responses.GET, re.compile(base + r"/job/(\d+)$"), callback=self._wrap("get"))
        rsps.add_callback(responses.DELETE, re.compile(base + r"/job/(\d+)$"), callback=self._wrap("delete"))
        rsps.add_callback(responses.GET, re.compile(re.escape(f"{SLURM}/slurmdb/{version}") + r"/job/(\d+)$"),
                          callback=self._wrap("dbd"))
        rsps.add_callback(responses.GET, re.compile(re.escape(f"{SLURM}/slurmdb/{version}") + r"/jobs/?(\?.*)?$"),
                          callback=self._wrap("dbd_jobs"))
        rsps.add_callback(responses.GET, re.compile(base + r"/diag/?$"), callback=self._wrap("diag"))
        rsps.add_callback(responses.GET, re.compile(base + r"/ping/?$"), callback=self._wrap("ping"))
        self.dbd_backlog: Optional[int] = 0  # sdiag's "DBD Agent queue size"; None: not in the answer
        self.dbd_backlogs: list[int] = []  # answered first, one per diag request, before dbd_backlog
        rsps.add_callback(responses.GET, f"{SLURM}/openapi/v3", callback=self._wrap("openapi"))

    def _wrap(self, route: str) -> Any:
        def callback(request: requests.PreparedRequest) -> tuple:
            headers = {key: value for key, value in request.headers.items() if key.startswith("X-SLURM")}
            self.requests.append((request.method, request.url, headers))
            if self.down:
                return 0, {}, requests.ConnectionError("connection refused")
            user, token = headers.get("X-SLURM-USER-NAME"), headers.get("X-SLURM-USER-TOKEN")
            if not user or not token:
                return 401, {"Content-Type": "text/plain"}, "Authentication failure"
            # slurmrestd only passes the token on: what needs no slurmctld (its OpenAPI document) takes any
            try:
                claims = jwt.decode(token, self.jwt_key, algorithms=["HS256"]) if route != "openapi" else {"sun": user}
            except jwt.PyJWTError:
                return self.refused_token_answer
            if claims.get("sun") != user:
                return self.refused_token_answer
            queued = _queued(self.answers, route, {"errors": [{"error_number": 5005, "error": "injected failure"}]})
            if queued:
                return queued
            job_id = re.search(r"/job/(\d+)$", urlparse(request.url).path)
            handler = getattr(self, f"_{route}")  # looked up per call, so a test may wrap it
            return handler(request, user, int(job_id.group(1)) if job_id else None)

        return callback

    def add_job(self, job_id: int, state: Any = "RUNNING", reason: str = "None", user: Optional[str] = None,
                comment: str = "", exit_code: Any = 0) -> dict:
        job = {"job_id": job_id, "job_state": state, "state_reason": reason, "user_name": user or self.default_user,
               "comment": comment, "exit_code": exit_code, "name": f"job-{job_id}", "submit_time": int(time.time())}
        self.jobs[job_id] = job
        return job

    def slow_down_submits(self, seconds: float) -> None:
        """Every later job submit takes `seconds` longer, as a busy slurmctld's would."""
        submit = self._submit

        def slow_submit(*args: Any) -> tuple:
            time.sleep(seconds)
            return submit(*args)

        self._submit = slow_submit  # type: ignore[method-assign]

    def _submit(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        payload = json.loads(request.body)
        job = payload["job"]
        with self.submit_lock:
            self.submitted.append({"user": user, **payload})
            job_id = self.next_id
            self.next_id += 1
            self.add_job(job_id, "PENDING", "Priority", user, job.get("comment", ""))
            self.jobs[job_id]["name"] = job.get("name", "")
        return _json(200, {"errors": [], "job_id": job_id, "step_id": "BATCH", "job_submit_user_msg": ""})

    def _list(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        seen = json.dumps(self.jobs, sort_keys=True)
        if seen != self._jobs_seen:
            self._jobs_seen, self.last_job_update = seen, time.time()
        since = parse_qs(urlparse(request.url).query).get("update_time")
        if since and int(since[0]) - 1 >= self.last_job_update:  # slurmctld's test (_slurm_rpc_dump_jobs)
            if self.version == "v0.0.38":
                return 304, {}, ""
            return _json(200, {"jobs": [], "errors": [], "warnings": [
                {"description": f"No job changes since update_time={since[0]}", "source": "_op_handler_jobs"}]})
        return _json(200, {"errors": [], "jobs": list(self.jobs.values())})

    def _state(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        """Each asked job, or every task of an asked array, as {"job_id": "12" or "12_3", "state": [...]}:
        a started task under the array's id on v0.0.40 and under its own from v0.0.41 (as 24.11.5
        answers); a comma-separated list is refused as 24.11 and 25.11 refuse it."""
        if not self.serves_state_query:
            return 404, {"Content-Type": "text/plain"}, "Unable find requested URL."
        asked = parse_qs(urlparse(request.url).query).get("job_id", [])
        if any("," in value for value in asked):
            return 400, {"Content-Type": "text/plain"}, "Unable to parse query."
        by_id: dict[int, list[dict[str, Any]]] = {}
        for job in self.jobs.values():
            array_id = unwrap_number(job.get("array_job_id")) or 0
            for key in {job["job_id"], array_id} - {0}:
                by_id.setdefault(key, []).append(job)
        answer = []
        for job_id in map(int, asked):
            for job in by_id.get(job_id, []):
                array_id = unwrap_number(job.get("array_job_id")) or 0
                state = job["job_state"] if isinstance(job["job_state"], list) else [job["job_state"]]
                task = unwrap_number(job.get("array_task_id"))
                if not array_id:
                    answer.append({"job_id": str(job["job_id"]), "state": state})
                elif isinstance(task, int):
                    prefix = array_id if self.version == "v0.0.40" else job["job_id"]
                    answer.append({"job_id": f"{prefix}_{task}", "state": state})
                else:  # the pending tasks not yet split off, one record each
                    answer += [{"job_id": f"{array_id}_{pending}", "state": state}
                               for pending in expand_task_ranges(job["array_task_string"])]
        return _json(200, {"jobs": answer, "errors": [], "warnings": []})

    def _get(self, request: requests.PreparedRequest, user: str, job_id: int) -> tuple:
        if job_id not in self.jobs:
            return _json(500, {"errors": [{"description": f"Unable to find JobId={job_id}", "error_number": 2017,
                                           "error": "Invalid job id specified", "source": "slurm_load_job"}], "jobs": []})
        # an array's id reads every task of it, as slurm_load_job does
        return _json(200, {"errors": [], "jobs": [job for job in self.jobs.values() if job_id in
                                                  (job["job_id"], unwrap_number(job.get("array_job_id")))]})

    def _delete(self, request: requests.PreparedRequest, user: str, job_id: int) -> tuple:
        job = self.jobs.get(job_id)
        if job is None:
            return _json(500, {"errors": [{"error_number": 2017, "error": "Invalid job id specified"}]})
        if job["user_name"] != user:
            return _json(500, {"errors": [{"error_number": 2002, "error": "Access/permission denied"}]})
        self.cancelled.append((job_id, user))
        if job["job_state"] in ("PENDING", "RUNNING"):
            job.update(job_state="CANCELLED", state_reason="None")
        return _json(200, {"errors": []})

    def _dbd(self, request: requests.PreparedRequest, user: str, job_id: int) -> tuple:
        if job_id in self.accounting:
            return _json(200, {"errors": [], "jobs": [self.accounting[job_id]]})
        return _json(200, {"errors": [{"description": "Nothing found", "error_number": 9003,
                                       "error": "Nothing found with query", "source": "slurmdb_jobs_get"}], "jobs": []})

    def _dbd_jobs(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        """Every record, whatever the filters (v0.0.38 honours few of them: the tool filters again)."""
        if not self.accounting:
            return _json(200, {"errors": [{"description": "Nothing found", "error_number": 9003,
                                           "error": "Nothing found with query", "source": "slurmdb_jobs_get"}], "jobs": []})
        return _json(200, {"errors": [], "jobs": list(self.accounting.values())})

    def _diag(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        statistics = {"jobs_submitted": len(self.submitted), "agent_queue_size": 0}
        backlog = self.dbd_backlogs.pop(0) if self.dbd_backlogs else self.dbd_backlog
        if backlog is not None:
            statistics["dbd_agent_queue_size"] = backlog
        return _json(200, {"errors": [], "statistics": statistics})

    def _ping(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        return _json(200, {"errors": [], "pings": [{"hostname": "head", "ping": "UP", "status": 0, "mode": "primary"}]})

    def purge(self, job_id: int, submitted_at: float, job_comment: bool = True, **fields: Any) -> dict:
        """slurmctld forgets a finished job; slurmdbd keeps its record (dbv0.0.38 shape), with the
        comment only under AccountingStoreFlags=job_comment."""
        job = self.jobs.pop(job_id)
        sent = next((entry["job"] for entry in self.submitted if entry["job"].get("comment") == job["comment"]), {})
        state = job["job_state"] if job["job_state"] in DONE_STATES | ABORT_STATES else "COMPLETED"
        record = {"job_id": job_id, "name": job["name"], "user": job["user_name"], "array": {"job_id": 0},
                  "working_directory": sent.get("current_working_directory", "/"),
                  "comment": {"job": job["comment"] if job_comment else None, "administrator": None, "system": None},
                  "time": {"submission": int(submitted_at), "start": int(submitted_at) + 1, "end": int(submitted_at) + 2},
                  "state": {"current": state, "reason": "None"}, **fields}
        self.accounting[job_id] = record
        return record
    def _openapi(self, request: requests.PreparedRequest, user: str, _: Any) -> tuple:
        paths = [f"/slurm/{self.version}/{path}" for path in ("job/submit", "jobs", "job/{job_id}", "ping")]
        if self.serves_state_query:
            paths.append(f"/slurm/{self.version}/jobs/state/")
        if self.serves_slurmdbd:
            paths.append(f"/slurmdb/{self.version}/job/{{job_id}}")
        return _json(200, {"openapi": "3.0.2", "info": {"version": "Slurm-22.05.8"},
                           "paths": {path: {} for path in paths}})


def ping_of_controllers(recorded: dict[str, Any], up: dict[str, bool]) -> dict[str, Any]:
    """A GET ping answer of one controller (as recorded) made into one of the controllers `up` names,
    in SlurmctldHost order, each UP or not, as Slurm writes each entry (v0.0.38 `_op_handler_ping`,
    data_parser CONTROLLER_PING from v0.0.40): the fields that version has, set for that controller."""
    [template] = recorded["pings"]
    pings = []
    for position, (hostname, responding) in enumerate(up.items()):
        entry = dict(template, hostname=hostname)
        for key in ("ping", "pinged"):
            if key in entry:
                entry[key] = "UP" if responding else "DOWN"
        if "responding" in entry:
            entry["responding"] = responding
        if "status" in entry:  # v0.0.38: slurm_ping()'s return code (1800: no connection)
            entry["status"] = 0 if responding else 1800
        if "mode" in entry:
            entry["mode"] = "primary" if position == 0 else "backup" if len(up) == 2 else f"backup{position}"
        if "primary" in entry:
            entry["primary"] = position == 0
        pings.append(entry)
    return {**recorded, "pings": pings}


def slurm_of(stack: Any, version: str) -> FakeSlurm:
    """A fake slurmrestd serving `version` in place of the stack's v0.0.38 one; other versions'
    paths answer 404 text as slurmrestd does."""
    stack.rsps.remove(responses.GET, f"{SLURM}/openapi/v3")
    default_user = stack.slurm.default_user
    stack.slurm = FakeSlurm(stack.rsps, JWT_KEY, version)
    stack.slurm.default_user = default_user
    for method in (responses.GET, responses.POST, responses.DELETE):
        stack.rsps.add(method, re.compile(re.escape(SLURM) + r"/slurm(db)?/v0\.0\.(?!" + version[-2:] + r")\d+/.*"),
                       status=404, content_type="text/plain",
                       body="Unable find requested URL. Please view /openapi/v3 for API reference.")
    return stack.slurm


class FakeInfluxDB:
    """InfluxDB 1.x's /query for the statements jobbergate-sync sends: SHOW DATABASES, SHOW
    MEASUREMENTS, the profile SELECT (measurements, a job regex, an optional `time > Ns`, GROUP BY
    job, host, step, task) and the series' first("value"), answered chunked, one JSON object a line."""

    SELECT_RE = re.compile(r'SELECT "value" FROM (?P<names>.+?) WHERE "job" =~ /\^\((?P<jobs>[\d|]+)\)\$/'
                           r'(?: AND time > (?P<since>\d+)s)? GROUP BY "job","host","step","task"$')
    FIRST_RE = re.compile(r'SELECT first\("value"\) FROM (?P<names>"CPUTime") WHERE "job" =~ /\^\((?P<jobs>[\d|]+)\)\$/'
                          r' AND time > (?P<since>\d+)s GROUP BY "job","host","step","task"$')

    def __init__(self, rsps: responses.RequestsMock, database: str = "slurm"):
        self.databases = {database}
        self.points: list[tuple[str, int, str, int, int, int, float]] = []  # measurement, job, host, step, task, time, value
        self.queries: list[dict[str, str]] = []
        self.authorizations: list[Optional[str]] = []
        self.down = False
        rsps.add_callback(responses.GET, re.compile(re.escape(INFLUXDB) + r"/query(\?.*)?$"), callback=self._query)

    def sample(self, job: int, time_s: int, host: str = "c1", step: int = 0, task: int = 0, **values: float) -> None:
        """One profile sample of a task: a point per measurement given (e.g. RSS=2048.0)."""
        for measurement, value in values.items():
            self.points.append((measurement, job, host, step, task, time_s, value))

    def _query(self, request: requests.PreparedRequest) -> tuple:
        params = {key: values[0] for key, values in parse_qs(urlparse(request.url).query).items()}
        self.queries.append(params)
        self.authorizations.append(request.headers.get("Authorization"))
        if self.down:
            return 503, {}, "influxdb is down"
        results = [self._statement(number, text.strip()) for number, text in enumerate(params["q"].split(";"))]
        return 200, {"Content-Type": "application/json"}, "".join(json.dumps({"results": [result]}) + "\n"
                                                                 for result in results)

    def _statement(self, number: int, text: str) -> dict[str, Any]:
        if text == "SHOW DATABASES":
            return {"statement_id": number, "series": [
                {"name": "databases", "columns": ["name"], "values": [[name] for name in sorted(self.databases)]}]}
        if text == "SHOW MEASUREMENTS":
            names = sorted({point[0] for point in self.points})
            return {"statement_id": number, **({"series": [
                {"name": "measurements", "columns": ["name"], "values": [[name] for name in names]}]} if names else {})}
        match = self.SELECT_RE.match(text) or self.FIRST_RE.match(text)
        if not match:
            return {"statement_id": number, "error": f"error parsing query: {text}"}
        names = [name.strip('"') for name in match.group("names").split(",")]
        first_only = match.re is self.FIRST_RE
        jobs = {int(job) for job in match.group("jobs").split("|")}
        since = int(match.group("since")) if match.group("since") else None
        grouped: dict[tuple, list] = {}
        for measurement, job, host, step, task, time_s, value in sorted(self.points, key=lambda point: point[5]):
            if measurement in names and job in jobs and (since is None or time_s > since):
                grouped.setdefault((measurement, job, host, step, task), []).append([time_s, value])
        return {"statement_id": number, "series": [
            {"name": measurement, "tags": {"job": str(job), "host": host, "step": str(step), "task": str(task)},
             "columns": ["time", "first" if first_only else "value"], "values": values[:1] if first_only else values}
            for (measurement, job, host, step, task), values in sorted(grouped.items())]}
