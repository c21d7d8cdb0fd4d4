"""Helpers for the jobbergate-sync end-to-end tests against the real stack (see stack.sh).

Everything reads ``${JGS_STACK_DIR:-/var/tmp/jobbergate-sync-stack}/stack.env``, written by
``tests/integration/stack.sh up``. Needs only ``requests`` (tokens for Slurm are HS256 via stdlib).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import requests

HERE = Path(__file__).resolve().parent
STACK_SH = HERE / "stack.sh"
DEFAULT_STACK_DIR = "/var/tmp/jobbergate-sync-stack"
NOT_UP = "integration stack is not up: run tests/integration/stack.sh up"
TIMEOUT = 15  # seconds, per HTTP request

SLURM_TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
)


class StackNotUp(RuntimeError):
    """stack.env is missing or a service does not answer."""


class ApiError(RuntimeError):
    def __init__(self, response: requests.Response, expected: Iterable[int]):
        self.response = response
        self.status = response.status_code
        super().__init__(
            f"{response.request.method} {response.url} -> HTTP {response.status_code} "
            f"(expected {sorted(expected)}): {response.text[:800]}"
        )


# ------------------------------------------------------------------------------------------ stack


def stack_dir() -> Path:
    return Path(os.environ.get("JGS_STACK_DIR", DEFAULT_STACK_DIR))


def load_stack_env(path: Path | str | None = None) -> dict[str, str]:
    """Parse stack.env (KEY=VALUE lines). Raises StackNotUp if it is missing."""
    path = Path(path) if path else stack_dir() / "stack.env"
    if not path.is_file():
        raise StackNotUp(f"{NOT_UP} ({path} not found)")
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@dataclass(frozen=True)
class OidcUser:
    username: str
    password: str
    email: str


@dataclass(frozen=True)
class SlurmLeg:
    """One Slurm version of the stack, running in its own root (stack.env's JGS_SLURM_<LEG>_*)."""

    name: str  # "2205", "2411", "2511"
    url: str  # slurmrestd base, http://127.0.0.1:6830
    jwt_key_path: Path  # host-side path of the leg's JWT key (root-readable)
    root: Path  # the leg's root directory (chroot)
    api_versions: tuple[str, ...]  # ("v0.0.40", "v0.0.41", "v0.0.42")
    cluster: str  # Slurm ClusterName
    node: str
    partition: str
    version: str  # Slurm release, e.g. 24.11.5

    @property
    def api_version(self) -> str:
        """The newest OpenAPI version the leg serves (the default for requests and the tool)."""
        return self.api_versions[-1]

    @classmethod
    def from_env(cls, env: dict[str, str], name: str) -> "SlurmLeg":
        p = f"JGS_SLURM_{name}_"
        return cls(
            name=name,
            url=env[p + "URL"].rstrip("/"),
            jwt_key_path=Path(env[p + "JWT_KEY"]),
            root=Path(env[p + "ROOT"]),
            api_versions=tuple(v for v in env[p + "API_VERSIONS"].split(",") if v),
            cluster=env[p + "CLUSTER"],
            node=env[p + "NODE"],
            partition=env.get(p + "PARTITION", "debug"),
            version=env.get(p + "VERSION", ""),
        )


@dataclass
class Stack:
    """Addresses and names of the running stack (attributes mirror stack.env)."""

    env: dict[str, str]
    stack_dir: Path = field(init=False)
    api_url: str = field(init=False)  # http://127.0.0.1:8000/jobbergate
    oidc_url: str = field(init=False)  # issuer: http://127.0.0.1:8180/realms/jobbergate-local
    oidc_domain: str = field(init=False)  # 127.0.0.1:8180/realms/jobbergate-local (no scheme)
    token_url: str = field(init=False)
    oidc_test_url: str = field(init=False)  # http://127.0.0.1:8180/_test
    client_id: str = field(init=False)  # local-slurm
    client_secret: str = field(init=False)
    user_client_id: str = field(init=False)  # cli
    users: dict[str, OidcUser] = field(init=False)
    legs: dict[str, SlurmLeg] = field(init=False)  # the Slurm legs that are up, by name
    default_leg: str = field(init=False)  # "2205"
    # the default leg's slurmrestd, as before there were legs
    slurmrestd_url: str = field(init=False)  # http://127.0.0.1:6820
    slurmrestd_version: str = field(init=False)  # v0.0.38
    jwt_key_path: Path = field(init=False)
    cluster: str = field(init=False)  # Slurm ClusterName of the default leg
    node: str = field(init=False)
    partition: str = field(init=False)
    unix_users: list[str] = field(init=False)
    system_user: str = field(init=False)
    stack_sh: Path = field(init=False)
    ldap: dict[str, str] = field(init=False)  # JGS_LDAP_URL -> ldap["url"], ... (empty without slapd)

    def __post_init__(self) -> None:
        e = self.env
        self.stack_dir = Path(e.get("JGS_STACK_DIR", str(stack_dir())))
        self.api_url = e["JGS_API_URL"].rstrip("/")
        self.oidc_url = e["JGS_OIDC_URL"].rstrip("/")
        self.oidc_domain = e["JGS_OIDC_DOMAIN"]
        self.token_url = e["JGS_OIDC_TOKEN_URL"]
        self.oidc_test_url = e["JGS_OIDC_TEST_URL"].rstrip("/")
        self.client_id = e["JGS_OIDC_CLIENT_ID"]
        self.client_secret = e["JGS_OIDC_CLIENT_SECRET"]
        self.user_client_id = e.get("JGS_OIDC_USER_CLIENT_ID", "cli")
        self.users = {}
        for item in filter(None, e.get("JGS_OIDC_USERS", "").split(",")):
            name, password, email = (item.split(":", 2) + ["", ""])[:3]
            self.users[name] = OidcUser(name, password, email)
        self.default_leg = e.get("JGS_DEFAULT_LEG", "")
        self.legs = {name: SlurmLeg.from_env(e, name) for name in e.get("JGS_SLURM_LEGS", "").split(",") if name}
        self.slurmrestd_url = e["JGS_SLURMRESTD_URL"].rstrip("/")
        self.slurmrestd_version = e.get("JGS_SLURMRESTD_VERSION", "v0.0.38")
        self.jwt_key_path = Path(e["JGS_SLURM_JWT_KEY"])
        self.cluster = e["JGS_SLURM_CLUSTER"]
        self.node = e["JGS_SLURM_NODE"]
        self.partition = e.get("JGS_SLURM_PARTITION", "debug")
        self.unix_users = [u for u in e.get("JGS_UNIX_USERS", "").split(",") if u]
        self.system_user = e.get("JGS_SYSTEM_USER", "daemon")
        self.stack_sh = Path(e.get("JGS_STACK_SH") or STACK_SH)
        self.ldap = {key[len("JGS_LDAP_"):].lower(): value for key, value in e.items() if key.startswith("JGS_LDAP_")}
        if not self.stack_sh.exists():
            self.stack_sh = STACK_SH

    # secrets of the confidential clients, by client id
    @property
    def client_secrets(self) -> dict[str, str]:
        e = self.env
        out = {self.client_id: self.client_secret}
        for prefix in ("JGS_OIDC_OTHER", "JGS_OIDC_NOPERM"):
            if f"{prefix}_CLIENT_ID" in e:
                out[e[f"{prefix}_CLIENT_ID"]] = e[f"{prefix}_CLIENT_SECRET"]
        # the matrix clusters (oidc_issuer.expand_agent_clients): one per Slurm leg and API version
        realm = json.loads((HERE / "oidc_realm.json").read_text())
        out.update({name: f"{name}-secret" for name in realm.get("agent_clients", [])})
        return out

    @property
    def oidc_base(self) -> str:
        """Scheme, host and port of the issuer: http://127.0.0.1:8180"""
        return self.oidc_url.split("/realms/", 1)[0]

    def leg(self, name: str | None = None) -> SlurmLeg:
        """A leg by name (default: the default leg); KeyError names the legs that are up."""
        name = name or self.default_leg
        if name not in self.legs:
            raise KeyError(f"Slurm leg {name!r} is not up; legs up: {sorted(self.legs)} (JGS_SLURM_LEGS)")
        return self.legs[name]

    @property
    def slurm_api(self) -> str:
        return f"{self.slurmrestd_url}/slurm/{self.slurmrestd_version}"

    @property
    def slurmdb_api(self) -> str:
        return f"{self.slurmrestd_url}/slurmdb/{self.slurmrestd_version}"

    def problems(self) -> list[str]:
        """What does not answer as it should (empty list = all fine)."""
        checks = [
            ("jobbergate-api", f"{self.api_url}/health", {204}),
            ("OIDC issuer", f"{self.oidc_url}/.well-known/openid-configuration", {200}),
            ("slurmrestd", f"{self.slurmrestd_url}/openapi/v3", {401, 200}),
        ]
        checks += [(f"slurmrestd {leg.name}", f"{leg.url}/openapi/v3", {401, 200}) for leg in self.legs.values()]
        out = []
        for name, url, ok in checks:
            try:
                code = requests.get(url, timeout=5).status_code
            except requests.RequestException as exc:
                out.append(f"{name} at {url}: {exc.__class__.__name__}")
                continue
            if code not in ok:
                out.append(f"{name} at {url}: HTTP {code}")
        return out

    def check(self) -> "Stack":
        problems = self.problems()
        if problems:
            raise StackNotUp(f"{NOT_UP} ({'; '.join(problems)})")
        return self


_STACK: Stack | None = None


def get_stack(reload: bool = False) -> Stack:
    """The Stack described by stack.env (cached)."""
    global _STACK
    if _STACK is None or reload:
        _STACK = Stack(load_stack_env())
    return _STACK


def _s(stack: Stack | None) -> Stack:
    return stack or get_stack()


def unique(prefix: str = "jgs") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)


def jwt_claims(token: str) -> dict:
    """Decode a JWT's payload without verifying it."""
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


# ------------------------------------------------------------------------------------------- OIDC


def oidc_token(stack: Stack | None = None, client_id: str | None = None, secret: str | None = None, basic: bool = False) -> str:
    """A client-credentials access token from the test issuer (counted in its stats)."""
    st = _s(stack)
    client_id = client_id or st.client_id
    secret = secret if secret is not None else st.client_secrets.get(client_id, "")
    data = {"grant_type": "client_credentials"}
    auth = None
    if basic:
        auth = (client_id, secret)
    else:
        data.update(client_id=client_id, client_secret=secret)
    response = requests.post(st.token_url, data=data, auth=auth, timeout=TIMEOUT)
    if response.status_code != 200:
        raise ApiError(response, {200})
    return response.json()["access_token"]


class IssuerControl:
    """The issuer's test-only endpoints (/_test/...)."""

    def __init__(self, stack: Stack | None = None):
        self.stack = _s(stack)
        self.base = self.stack.oidc_test_url

    def _post(self, path: str, body: dict | None = None) -> dict:
        response = requests.post(f"{self.base}/{path}", json=body or {}, timeout=TIMEOUT)
        if response.status_code != 200:
            raise ApiError(response, {200})
        return response.json()

    def stats(self) -> dict:
        """{"issued": {client: {grant: n}}, "refused": {...}, "issued_total", "refused_total", ...}"""
        response = requests.get(f"{self.base}/stats", timeout=TIMEOUT)
        if response.status_code != 200:
            raise ApiError(response, {200})
        return response.json()

    def issued(self, client_id: str, grant: str | None = None) -> int:
        table = self.stats()["issued"].get(client_id, {})
        return table.get(grant, 0) if grant else sum(table.values())

    def refused(self, client_id: str, grant: str | None = None) -> int:
        table = self.stats()["refused"].get(client_id, {})
        return table.get(grant, 0) if grant else sum(table.values())

    def reset(self) -> dict:
        """Clear stats, the TTL override and pending faults."""
        return self._post("reset")

    def set_ttl(self, seconds: int | None, refresh_seconds: int | None = None) -> dict:
        """Access-token lifetime for new tokens (None = realm default, 300 s)."""
        body: dict[str, Any] = {"seconds": seconds}
        if refresh_seconds is not None:
            body["refresh_seconds"] = refresh_seconds
        return self._post("ttl", body)

    def fault(self, count: int, sleep: float = 0, status: int | None = None, body: dict | None = None) -> dict:
        """The next ``count`` token calls sleep ``sleep`` s, then fail with ``status`` if given."""
        return self._post("fault", {"count": count, "sleep": sleep, "status": status, "body": body})

    def clear_faults(self) -> dict:
        return self._post("fault", {"count": 0})

    def mint_response(self, **kwargs: Any) -> dict:
        return self._post("mint", {k: v for k, v in kwargs.items() if v is not None})

    def mint(
        self,
        client: str | None = None,
        user: str | None = None,
        ttl: int | None = None,
        permissions: list[str] | None = None,
        claims: dict | None = None,
        remove_claims: list[str] | None = None,
        bad_signature: bool = False,
        kid: str | None = None,
    ) -> str:
        """A token signed by the issuer (not counted in stats). ``ttl`` < 0 = already expired."""
        return self.mint_response(
            client=client,
            user=user,
            ttl=ttl,
            permissions=permissions,
            claims=claims,
            remove_claims=remove_claims,
            bad_signature=bad_signature or None,
            kid=kid,
        )["access_token"]

    def token(self, client_id: str | None = None, secret: str | None = None) -> str:
        """A real client-credentials token (counted)."""
        return oidc_token(self.stack, client_id, secret)


# -------------------------------------------------------------------------------------------- API


class _ApiClient:
    def __init__(self, stack: Stack | None):
        self.stack = _s(stack)
        self.session = requests.Session()
        # A fresh connection per request: a kept-alive one that uvicorn closes while idle (after 5 s)
        # can be reset just as a test reuses it, which would fail a POST for nothing.
        self.session.headers["Connection"] = "close"
        self._token: str | None = None
        self._exp = 0.0

    def _fetch_token(self) -> str:
        raise NotImplementedError

    @property
    def token(self) -> str:
        if self._token is None or time.time() > self._exp - 15:
            self._token = self._fetch_token()
            self._exp = float(jwt_claims(self._token).get("exp", 0))
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Raw request to ``{api_url}{path}`` with the bearer token; never raises on status."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", TIMEOUT)
        return self.session.request(method, f"{self.stack.api_url}{path}", headers=headers, **kwargs)

    def call(self, method: str, path: str, expected: Iterable[int] = (200,), **kwargs: Any) -> Any:
        expected = set(expected)
        response = self.request(method, path, **kwargs)
        if response.status_code not in expected:
            raise ApiError(response, expected)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def paged(self, path: str, size: int = 100, **params: Any) -> list[dict]:
        """All items of a paginated list route."""
        items: list[dict] = []
        page = 1
        while True:
            data = self.call("GET", path, params={**params, "page": page, "size": size})
            items.extend(data["items"])
            if page >= (data.get("pages") or 0):
                return items
            page += 1


class UserClient(_ApiClient):
    """A Jobbergate user (password grant on the public client ``cli``)."""

    def __init__(self, stack: Stack | None, username: str, password: str | None = None):
        super().__init__(stack)
        self.username = username
        if password is None:
            if username not in self.stack.users:
                raise KeyError(f"unknown OIDC user {username!r}; known: {sorted(self.stack.users)}")
            password = self.stack.users[username].password
        self.password = password

    @property
    def email(self) -> str:
        return self.stack.users[self.username].email if self.username in self.stack.users else ""

    def _fetch_token(self) -> str:
        response = requests.post(
            self.stack.token_url,
            data={
                "grant_type": "password",
                "client_id": self.stack.user_client_id,
                "username": self.username,
                "password": self.password,
            },
            timeout=TIMEOUT,
        )
        if response.status_code != 200:
            raise ApiError(response, {200})
        return response.json()["access_token"]

    def create_job_script(
        self,
        name: str,
        files: dict[str, bytes | str],
        entrypoint: str | None = None,
        description: str | None = None,
    ) -> dict:
        """POST /job-scripts, then upload ``entrypoint`` (default: the first file) as ENTRYPOINT and
        the others as SUPPORT. Returns the script as read back (with ``files``)."""
        if not files:
            raise ValueError("files must not be empty")
        entrypoint = entrypoint or next(iter(files))
        if entrypoint not in files:
            raise ValueError(f"entrypoint {entrypoint!r} not in files")
        body = {"name": name}
        if description is not None:
            body["description"] = description
        script = self.call("POST", "/job-scripts", expected=(201,), json=body)
        ordered = [entrypoint] + [f for f in files if f != entrypoint]
        for filename in ordered:
            self.upload(script["id"], "ENTRYPOINT" if filename == entrypoint else "SUPPORT", filename, files[filename])
        return self.get_job_script(script["id"])

    def upload(self, job_script_id: int, kind: str, filename: str, content: bytes | str) -> None:
        """PUT one file (kind ENTRYPOINT or SUPPORT) into a job script; ApiError when refused."""
        if isinstance(content, str):
            content = content.encode()
        self.call(
            "PUT",
            f"/job-scripts/{job_script_id}/upload/{kind}",
            expected=(200,),
            files={"upload_file": (filename, content, "text/plain")},
        )

    def get_job_script(self, job_script_id: int) -> dict:
        return self.call("GET", f"/job-scripts/{job_script_id}")

    def create_submission(
        self,
        job_script_id: int,
        name: str,
        client_id: str = "local-slurm",
        execution_directory: str | None = None,
        sbatch_arguments: list[str] | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> dict:
        body: dict[str, Any] = {"name": name, "job_script_id": job_script_id, "client_id": client_id}
        if execution_directory is not None:
            body["execution_directory"] = execution_directory
        if sbatch_arguments is not None:
            body["sbatch_arguments"] = sbatch_arguments
        if description is not None:
            body["description"] = description
        body.update(extra)
        return self.call("POST", "/job-submissions", expected=(201,), json=body)

    def get_submission(self, submission_id: int) -> dict:
        return self.call("GET", f"/job-submissions/{submission_id}")

    def update_submission(self, submission_id: int, **fields: Any) -> dict:
        """PUT /job-submissions/{id} (a user may even force ``status``)."""
        return self.call("PUT", f"/job-submissions/{submission_id}", json=fields)

    def cancel(self, submission_id: int) -> dict:
        return self.call("PUT", f"/job-submissions/cancel/{submission_id}")

    def progress(self, submission_id: int) -> list[dict]:
        return self.paged(f"/job-submissions/{submission_id}/progress")

    def cluster_status(self, client_id: str) -> dict | None:
        """GET /clusters/status/{client_id}; None when the cluster never reported."""
        response = self.request("GET", f"/clusters/status/{client_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError(response, {200, 404})
        return response.json()

    def wait_for_submission(
        self, submission_id: int, statuses: Iterable[str], timeout: float = 120, interval: float = 1
    ) -> dict:
        """Poll until the submission's status is one of ``statuses``."""
        wanted = set(statuses)

        def done() -> dict | None:
            sub = self.get_submission(submission_id)
            return sub if sub["status"] in wanted else None

        return wait_for(done, timeout, interval, f"submission {submission_id} in {sorted(wanted)}")


class AgentClient(_ApiClient):
    """The agent side of the API (client credentials), for assertions and cleanup in tests."""

    def __init__(self, stack: Stack | None = None, client_id: str | None = None, secret: str | None = None):
        super().__init__(stack)
        self.client_id = client_id or self.stack.client_id
        self.secret = secret if secret is not None else self.stack.client_secrets.get(self.client_id, "")

    def _fetch_token(self) -> str:
        return oidc_token(self.stack, self.client_id, self.secret)

    def pending(self) -> list[dict]:
        return self.paged("/job-submissions/agent/pending")

    def active(self) -> list[dict]:
        return self.paged("/job-submissions/agent/active")

    def mark_submitted(self, submission_id: int, slurm_job_id: int, state: str = "PENDING", info: str = "",
                       reason: str | None = None) -> None:
        body: dict[str, Any] = {"id": submission_id, "slurm_job_id": slurm_job_id, "slurm_job_state": state, "slurm_job_info": info}
        if reason is not None:
            body["slurm_job_state_reason"] = reason
        self.call("POST", "/job-submissions/agent/submitted", expected=(202,), json=body)

    def mark_rejected(self, submission_id: int, message: str) -> None:
        self.call("POST", "/job-submissions/agent/rejected", expected=(202,), json={"id": submission_id, "report_message": message})

    def update(self, submission_id: int, state: str, info: str = "", slurm_job_id: int | None = None, reason: str | None = None) -> None:
        body: dict[str, Any] = {"slurm_job_state": state, "slurm_job_info": info}
        if slurm_job_id is not None:
            body["slurm_job_id"] = slurm_job_id
        if reason is not None:
            body["slurm_job_state_reason"] = reason
        self.call("PUT", f"/job-submissions/agent/{submission_id}", expected=(202,), json=body)

    def ping(self, interval: int = 60) -> None:
        self.call("PUT", "/clusters/status", expected=(202,), params={"interval": interval})

    def drain(self, message: str = "integration-test cleanup") -> int:
        """Reject every pending and abort every active submission of this client (a clean slate
        for the next test). Returns how many submissions were touched."""
        touched = 0
        for item in self.pending():
            response = self.request("POST", "/job-submissions/agent/rejected", json={"id": item["id"], "report_message": message})
            touched += response.status_code == 202
        for item in self.active():
            body: dict[str, Any] = {"slurm_job_state": "CANCELLED", "slurm_job_info": message, "slurm_job_state_reason": message}
            if item.get("slurm_job_id") is not None:
                body["slurm_job_id"] = item["slurm_job_id"]
            response = self.request("PUT", f"/job-submissions/agent/{item['id']}", json=body)
            touched += response.status_code == 202
        return touched


# ------------------------------------------------------------------------------------------ Slurm


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _errors(body: dict) -> list[dict]:
    return body.get("errors") or []


def state_of(record: dict) -> str:
    """A job's state as one string: ``job_state`` of slurmctld or ``state.current`` of slurmdbd,
    a string up to v0.0.39 and a list (base state first, then flags) from v0.0.40 on."""
    state = record["state"]["current"] if "state" in record and "job_state" not in record else record.get("job_state")
    if isinstance(state, list):
        return state[0] if state else ""
    return state or ""


def api_minor(api_version: str) -> int:
    """38 for v0.0.38"""
    return int(api_version.rsplit(".", 1)[1])


class SlurmControl:
    """Slurm helpers for one leg (default: the default leg) and one OpenAPI version (default: the
    newest that leg serves). The module-level ``slurm_*`` functions are these methods on the
    default leg; they take ``stack=`` and ``leg=`` keywords."""

    def __init__(self, stack: Stack | None = None, leg: str | None = None, api_version: str | None = None):
        self.stack = _s(stack)
        self.leg = self.stack.leg(leg)
        self.api_version = api_version or self.leg.api_version
        if self.api_version not in self.leg.api_versions:
            raise ValueError(f"leg {self.leg.name} serves {self.leg.api_versions}, not {self.api_version}")

    def __repr__(self) -> str:
        return f"SlurmControl(leg={self.leg.name}, api_version={self.api_version})"

    def slurm_token(self, user: str = "slurm", lifespan: int = 3600) -> str:
        """HS256 Slurm JWT ``{"iat", "exp", "sun"}`` signed with the raw bytes of the leg's key (needs root)."""
        key = self.leg.jwt_key_path.read_bytes()
        now = int(time.time())
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        payload = _b64url(json.dumps({"iat": now, "exp": now + lifespan, "sun": user}, separators=(",", ":")).encode())
        signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def slurm_headers(self, user: str = "slurm", lifespan: int = 3600) -> dict[str, str]:
        return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self.slurm_token(user, lifespan)}

    def request(self, method: str, path: str, user: str = "slurm", **kwargs: Any) -> requests.Response:
        """Request to slurmrestd, ``path`` relative to its root (e.g. ``/slurm/v0.0.38/jobs``)."""
        headers = {**self.slurm_headers(user), **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", TIMEOUT)
        return requests.request(method, f"{self.leg.url}{path}", headers=headers, **kwargs)

    def slurm_jobs(self, user: str = "slurm") -> list[dict]:
        """Every job slurmctld still holds (GET /slurm/VERSION/jobs)."""
        response = self.request("GET", f"/slurm/{self.api_version}/jobs", user)
        if response.status_code != 200:
            raise ApiError(response, {200})
        return response.json().get("jobs", [])

    def slurm_jobs_with_comment(self, comment: str) -> list[dict]:
        return [job for job in self.slurm_jobs() if job.get("comment") == comment]

    def slurm_job(self, job_id: int, user: str = "slurm") -> dict | None:
        """GET /slurm/VERSION/job/{id}; None when slurmctld does not know it (error 2017: purged)."""
        response = self.request("GET", f"/slurm/{self.api_version}/job/{job_id}", user)
        try:
            body = response.json()
        except ValueError:
            raise ApiError(response, {200}) from None
        if any(err.get("error_number") == 2017 for err in _errors(body)):
            return None
        if response.status_code != 200 or _errors(body):
            raise ApiError(response, {200})
        jobs = body.get("jobs") or []
        return jobs[0] if jobs else None

    def slurmdb_job(self, job_id: int, user: str = "slurm") -> dict | None:
        """The newest slurmdbd record of a job (GET /slurmdb/VERSION/job/{id}); None if none yet."""
        response = self.request("GET", f"/slurmdb/{self.api_version}/job/{job_id}", user)
        if response.status_code != 200:
            raise ApiError(response, {200})
        jobs = response.json().get("jobs") or []
        if not jobs:
            return None
        return max(jobs, key=lambda j: (j.get("time", {}).get("submission") or 0))

    def slurm_submit(self, user: str, script: str, cwd: str | None = None, environment: dict[str, str] | None = None,
                     **job_fields: Any) -> int:
        """Submit directly to slurmrestd as ``user``. Returns the Slurm job id. ``environment`` is a
        dict; it is sent as a dict up to v0.0.39 and as a list of NAME=value from v0.0.40 on."""
        home = f"/home/{user}"
        env = environment or {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "USER": user}
        job: dict[str, Any] = {"current_working_directory": cwd or home, **job_fields}
        if api_minor(self.api_version) >= 40:
            body = {"job": {**job, "script": script, "environment": [f"{k}={v}" for k, v in env.items()]}}
        else:
            body = {"script": script, "job": {**job, "environment": env}}
        response = self.request("POST", f"/slurm/{self.api_version}/job/submit", user, json=body)
        body = response.json() if response.content else {}
        if response.status_code != 200 or _errors(body) or "job_id" not in body:
            raise ApiError(response, {200})
        return int(body["job_id"])

    def slurm_cancel(self, job_id: int, user: str = "slurm") -> requests.Response:
        return self.request("DELETE", f"/slurm/{self.api_version}/job/{job_id}", user)

    def wait_for_state(self, job_id: int, states: Iterable[str] = SLURM_TERMINAL_STATES, timeout: float = 120) -> dict:
        """Poll GET job/{id} until its state (see ``state_of``) is in ``states``; returns the job."""
        wanted = set(states)

        def check() -> dict | None:
            job = self.slurm_job(job_id)
            return job if job and state_of(job) in wanted else None

        return wait_for(check, timeout, 0.5, f"Slurm job {job_id} (leg {self.leg.name}) in {sorted(wanted)}")

    def cli(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm command (squeue, sacct, scontrol...) as root in the leg's root, e.g.
        ``cli("sacct", "-j", "42")``; stdout/stderr captured as text, the exit code kept."""
        proc = subprocess.run(["bash", str(self.stack.stack_sh), "slurm", self.leg.name, *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "JGS_STACK_DIR": str(self.stack.stack_dir)})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} on leg {self.leg.name} failed (rc={proc.returncode}): {proc.stderr}")
        return proc


def _on_leg(method: Callable[..., Any]) -> Callable[..., Any]:
    """A module-level function for a SlurmControl method: same arguments plus ``stack=`` and ``leg=``."""

    @functools.wraps(method)
    def call(*args: Any, stack: Stack | None = None, leg: str | None = None, **kwargs: Any) -> Any:
        return method(SlurmControl(stack, leg), *args, **kwargs)

    return call


slurm_token = _on_leg(SlurmControl.slurm_token)
slurm_headers = _on_leg(SlurmControl.slurm_headers)
slurm_request = _on_leg(SlurmControl.request)
slurm_jobs = _on_leg(SlurmControl.slurm_jobs)
slurm_jobs_with_comment = _on_leg(SlurmControl.slurm_jobs_with_comment)
slurm_job = _on_leg(SlurmControl.slurm_job)
slurmdb_job = _on_leg(SlurmControl.slurmdb_job)
slurm_submit = _on_leg(SlurmControl.slurm_submit)
slurm_cancel = _on_leg(SlurmControl.slurm_cancel)
wait_for_slurm_state = _on_leg(SlurmControl.wait_for_state)
slurm_cli = _on_leg(SlurmControl.cli)


# ---------------------------------------------------------------------------------- service control


def run_stack(*args: str, stack: Stack | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``stack.sh ARGS`` (same JGS_STACK_DIR); raises RuntimeError with its output on failure."""
    st = _s(stack)
    env = {**os.environ, "JGS_STACK_DIR": str(st.stack_dir)}
    proc = subprocess.run(
        ["bash", str(st.stack_sh), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stack.sh {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _service(name: str, leg: str | None) -> str:
    return f"{name}@{leg}" if leg else name


def stop_service(name: str, stack: Stack | None = None, leg: str | None = None) -> None:
    """Stop one service: mariadb postgres s3 oidc api ldap, or one of a leg (munge slurmdbd slurmctld
    slurmd slurmrestd; ``leg`` or a ``NAME@LEG`` name, default: the default leg)."""
    run_stack("stop", _service(name, leg), stack=stack)


def start_service(name: str, stack: Stack | None = None, leg: str | None = None) -> None:
    """Start one service again (waits until it answers)."""
    run_stack("start", _service(name, leg), stack=stack)


def restart_service(name: str, stack: Stack | None = None, leg: str | None = None) -> None:
    run_stack("restart", _service(name, leg), stack=stack)


@contextlib.contextmanager
def service_down(name: str, stack: Stack | None = None, leg: str | None = None) -> Iterator[None]:
    """``with service_down("slurmrestd", leg="2411"): ...`` -- stopped inside, started again afterwards."""
    stop_service(name, stack, leg)
    try:
        yield
    finally:
        start_service(name, stack, leg)
