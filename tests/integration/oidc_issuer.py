#!/usr/bin/env python3
"""A small Keycloak-shaped OIDC issuer for the jobbergate-sync integration tests.

Stdlib HTTP server plus ``cryptography`` for RS256. It serves one realm (default
``jobbergate-local``) at ``http://HOST:PORT/realms/<realm>``:

* ``GET  /realms/<realm>/.well-known/openid-configuration``
* ``GET  /realms/<realm>/protocol/openid-connect/certs``       (JWKS, one RSA key)
* ``POST /realms/<realm>/protocol/openid-connect/token``       (client_credentials, password, refresh_token)
* ``GET  /realms/<realm>``                                      (Keycloak realm info)

Clients and users come from a JSON realm file (default: ``oidc_realm.json`` beside this file),
re-read whenever it changes. The RSA key is stored as PEM (0600, created exclusively) so it
survives restarts; ``kid`` is the RFC 7638 thumbprint.

Test-only extras (not Keycloak) live under ``/_test/``:

* ``GET  /_test/stats``  tokens issued / refused per client and grant
* ``POST /_test/reset``  clear stats, TTL override and pending faults
* ``POST /_test/ttl``    ``{"seconds": 5, "refresh_seconds": 30}`` (null = back to the realm default)
* ``POST /_test/fault``  ``{"count": N, "sleep": S, "status": 503}``: the next N token calls sleep
  S seconds and then (if ``status`` is given) fail with that status
* ``POST /_test/mint``   ``{"client": "local-slurm"}`` or ``{"user": "alice"}`` with optional
  ``ttl`` (negative = already expired), ``permissions`` (replacement list), ``claims`` (added or
  overridden), ``remove_claims`` (list of names), ``bad_signature`` (signed by a key not in the
  JWKS), ``kid`` (header kid override). Minted tokens are not counted in the stats.

Run with the API venv's python (needs ``cryptography``)::

    python oidc_issuer.py --port 8180 --key-file /var/tmp/.../oidc/signing-key.pem
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------- JWT


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """Load the PEM key at ``path``, creating it exclusively (mode 0600) if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            data = path.read_bytes()
            if data.strip().endswith(b"-----"):
                return serialization.load_pem_private_key(data, password=None)  # type: ignore[return-value]
            time.sleep(0.1)
        raise SystemExit(f"signing key {path} is empty or truncated; remove it to regenerate") from None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return key


class Signer:
    def __init__(self, key: rsa.RSAPrivateKey):
        self.key = key
        numbers = key.public_key().public_numbers()
        self.e = b64url_uint(numbers.e)
        self.n = b64url_uint(numbers.n)
        # RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
        canonical = json.dumps({"e": self.e, "kty": "RSA", "n": self.n}, separators=(",", ":"), sort_keys=True)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(canonical.encode())
        self.kid = b64url(digest.finalize())
        self.public_der_b64 = base64.b64encode(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()

    @property
    def jwk(self) -> dict:
        return {"kid": self.kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": self.n, "e": self.e}

    def sign(self, claims: dict, kid: str | None = None, key: rsa.RSAPrivateKey | None = None) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.kid}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = (key or self.key).sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)

    def verify(self, token: str) -> dict | None:
        try:
            head, body, sig = token.split(".")
            header = json.loads(b64url_decode(head))
            if header.get("alg") != "RS256":
                return None
            self.key.public_key().verify(
                b64url_decode(sig), f"{head}.{body}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
            return json.loads(b64url_decode(body))
        except (ValueError, InvalidSignature, binascii.Error, json.JSONDecodeError):
            return None


# ------------------------------------------------------------------------------------------- state


def expand_agent_clients(realm: dict) -> dict:
    """Each name in ``agent_clients`` becomes a service-account client with the secret
    ``<name>-secret`` and the ``agent_permissions``: one cluster per Slurm leg and API version
    in the matrix tests, without a page of identical JSON."""
    for name in realm.get("agent_clients", []):
        realm["clients"].setdefault(name, {"secret": f"{name}-secret", "service_account": True,
                                           "permissions": list(realm.get("agent_permissions", []))})
    return realm


class RealmConfig:
    """The realm JSON file, re-read whenever its mtime/size changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple | None = None
        self._data: dict = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._data = expand_agent_clients(json.loads(self.path.read_text()))
                self._stamp = stamp
            return self._data


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.issued: dict = defaultdict(lambda: defaultdict(int))
            self.refused: dict = defaultdict(lambda: defaultdict(int))
            self.faulted = 0
            self.access_ttl: int | None = None
            self.refresh_ttl: int | None = None
            self.fault_count = 0
            self.fault_sleep = 0.0
            self.fault_status: int | None = None
            self.fault_body: dict | None = None

    def count(self, table: dict, client: str, grant: str) -> None:
        with self.lock:
            table[client or "-"][grant or "-"] += 1

    def take_fault(self) -> tuple[float, int | None, dict | None] | None:
        with self.lock:
            if self.fault_count <= 0:
                return None
            self.fault_count -= 1
            self.faulted += 1
            return self.fault_sleep, self.fault_status, self.fault_body

    def snapshot(self) -> dict:
        with self.lock:
            issued = {c: dict(g) for c, g in self.issued.items()}
            refused = {c: dict(g) for c, g in self.refused.items()}
            return {
                "issued": issued,
                "refused": refused,
                "issued_total": sum(sum(g.values()) for g in issued.values()),
                "refused_total": sum(sum(g.values()) for g in refused.values()),
                "faulted_total": self.faulted,
                "faults_pending": self.fault_count,
                "access_ttl_override": self.access_ttl,
                "refresh_ttl_override": self.refresh_ttl,
            }


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status = status
        self.body = {"error": error, "error_description": description}


# ----------------------------------------------------------------------------------------- issuer


class Issuer:
    def __init__(self, base_url: str, realm: str, signer: Signer, config: RealmConfig):
        self.base_url = base_url.rstrip("/")
        self.realm = realm
        self.signer = signer
        self.config = config
        self.state = State()
        # a second key, never published: for bad-signature tokens
        self.rogue_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def issuer_url(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    def access_ttl(self) -> int:
        ttl = self.state.access_ttl
        return int(ttl if ttl is not None else self.config.get().get("access_token_ttl", 300))

    def refresh_ttl(self) -> int:
        ttl = self.state.refresh_ttl
        return int(ttl if ttl is not None else self.config.get().get("refresh_token_ttl", 1800))

    def discovery(self) -> dict:
        oc = f"{self.issuer_url}/protocol/openid-connect"
        return {
            "issuer": self.issuer_url,
            "authorization_endpoint": f"{oc}/auth",
            "token_endpoint": f"{oc}/token",
            "introspection_endpoint": f"{oc}/token/introspect",
            "userinfo_endpoint": f"{oc}/userinfo",
            "end_session_endpoint": f"{oc}/logout",
            "jwks_uri": f"{oc}/certs",
            "grant_types_supported": ["client_credentials", "password", "refresh_token"],
            "response_types_supported": ["code", "none", "id_token", "token"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "scopes_supported": ["openid", "profile", "email"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "azp", "email", "name", "preferred_username"],
        }

    def realm_info(self) -> dict:
        return {
            "realm": self.realm,
            "public_key": self.signer.public_der_b64,
            "token-service": f"{self.issuer_url}/protocol/openid-connect",
            "account-service": f"{self.issuer_url}/account",
            "tokens-not-before": 0,
        }

    # -- claims

    def _sub(self, kind: str, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer_url}/{kind}/{name}"))

    def _base_claims(self, ttl: int) -> dict:
        now = int(time.time())
        return {
            "exp": now + ttl,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer_url,
            "aud": "account",
            "typ": "Bearer",
            "acr": "1",
        }

    def client_claims(self, client_id: str, ttl: int, client_host: str = "127.0.0.1") -> dict:
        cfg = self.config.get()["clients"][client_id]
        claims = self._base_claims(ttl)
        claims.update(
            {
                "sub": self._sub("clients", client_id),
                "azp": client_id,
                "scope": "profile email",
                "clientId": client_id,
                "clientHost": client_host,
                "clientAddress": client_host,
                "email_verified": False,
                "preferred_username": f"service-account-{client_id}",
                "permissions": list(cfg.get("permissions", [])),
            }
        )
        return claims

    def user_claims(self, username: str, client_id: str, ttl: int, session: str | None = None) -> dict:
        realm = self.config.get()
        user = realm["users"][username]
        perms = user.get("permissions")
        if perms is None:
            perms = realm.get("user_permissions", {}).get(user.get("role", "ordinary"), [])
        name = user.get("name", username)
        given, _, family = name.partition(" ")
        claims = self._base_claims(ttl)
        claims.update(
            {
                "sub": self._sub("users", username),
                "azp": client_id,
                "sid": session or str(uuid.uuid4()),
                "scope": "profile email",
                "email_verified": True,
                "name": name,
                "given_name": given,
                "family_name": family,
                "preferred_username": username,
                "permissions": list(perms),
            }
        )
        if user.get("email"):
            claims["email"] = user["email"]
        return claims

    # -- token endpoint

    def _token_response(self, claims: dict, refresh_for: dict | None = None) -> dict:
        response = {
            "access_token": self.signer.sign(claims),
            "expires_in": claims["exp"] - claims["iat"],
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "profile email",
        }
        if refresh_for is not None:
            now = int(time.time())
            rttl = self.refresh_ttl()
            refresh = {
                "exp": now + rttl,
                "iat": now,
                "jti": str(uuid.uuid4()),
                "iss": self.issuer_url,
                "aud": self.issuer_url,
                "sub": claims["sub"],
                "typ": "Refresh",
                "azp": refresh_for["client_id"],
                "sid": claims.get("sid"),
                "preferred_username": refresh_for["username"],
                "scope": "profile email",
            }
            response["refresh_token"] = self.signer.sign(refresh)
            response["refresh_expires_in"] = rttl
            response["session_state"] = claims.get("sid")
        return response

    def token(self, form: dict, auth_header: str | None, client_host: str) -> dict:
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        secret = form.get("client_secret")
        if auth_header and auth_header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth_header.split(None, 1)[1]).decode()
                basic_id, _, basic_secret = decoded.partition(":")
                client_id, secret = unquote(basic_id), unquote(basic_secret)
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise OAuthError(400, "invalid_request", "Invalid Authorization header") from None
        if not grant:
            raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
        clients = self.config.get()["clients"]
        if not client_id or client_id not in clients:
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        client = clients[client_id]
        if not client.get("public"):
            if secret is None or secret != client.get("secret"):
                raise OAuthError(401, "unauthorized_client", "Invalid client secret")

        if grant == "client_credentials":
            if client.get("public"):
                raise OAuthError(401, "unauthorized_client", "Public client not allowed to retrieve service account")
            if not client.get("service_account"):
                raise OAuthError(401, "unauthorized_client", "Client not enabled to retrieve service account")
            return self._token_response(self.client_claims(client_id, self.access_ttl(), client_host))

        users = self.config.get()["users"]
        if grant == "password":
            if not client.get("direct_access_grants"):
                raise OAuthError(400, "unauthorized_client", "Client not allowed for direct access grants")
            username = form.get("username", "")
            user = users.get(username)
            if user is None or form.get("password") != user.get("password"):
                raise OAuthError(401, "invalid_grant", "Invalid user credentials")
            claims = self.user_claims(username, client_id, self.access_ttl())
            return self._token_response(claims, {"client_id": client_id, "username": username})

        if grant == "refresh_token":
            token = form.get("refresh_token")
            if not token:
                raise OAuthError(400, "invalid_request", "Missing parameter: refresh_token")
            claims = self.signer.verify(token)
            if claims is None or claims.get("typ") != "Refresh":
                raise OAuthError(400, "invalid_grant", "Invalid refresh token")
            if int(claims.get("exp", 0)) <= int(time.time()):
                raise OAuthError(400, "invalid_grant", "Token is not active")
            if claims.get("azp") != client_id:
                raise OAuthError(400, "invalid_grant", "Invalid refresh token. Token client and authorized client don't match")
            username = claims.get("preferred_username", "")
            if username not in users:
                raise OAuthError(400, "invalid_grant", "User not found")
            new = self.user_claims(username, client_id, self.access_ttl(), session=claims.get("sid"))
            return self._token_response(new, {"client_id": client_id, "username": username})

        raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")

    # -- test extras

    def mint(self, body: dict) -> dict:
        ttl = int(body["ttl"]) if body.get("ttl") is not None else self.access_ttl()
        if body.get("user"):
            username = body["user"]
            if username not in self.config.get()["users"]:
                raise OAuthError(400, "invalid_request", f"unknown user {username!r}")
            claims = self.user_claims(username, body.get("client") or "cli", ttl)
        elif body.get("client"):
            client_id = body["client"]
            if client_id not in self.config.get()["clients"]:
                raise OAuthError(400, "invalid_request", f"unknown client {client_id!r}")
            claims = self.client_claims(client_id, ttl)
        else:
            raise OAuthError(400, "invalid_request", "give 'client' or 'user'")
        if body.get("permissions") is not None:
            claims["permissions"] = list(body["permissions"])
        claims.update(body.get("claims") or {})
        for name in body.get("remove_claims") or []:
            claims.pop(name, None)
        token = self.signer.sign(
            claims, kid=body.get("kid"), key=self.rogue_key if body.get("bad_signature") else None
        )
        return {"access_token": token, "token_type": "Bearer", "expires_in": ttl, "claims": claims}


# ---------------------------------------------------------------------------------------- handler


class Handler(BaseHTTPRequestHandler):
    server_version = "jgs-test-oidc/1.0"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # ~44 ms -> ~2 ms per token call (delayed ACK)
    issuer: Issuer  # set on the class by main()

    def log_message(self, fmt: str, *args) -> None:  # noqa: D401 - stdlib signature
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.address_string()} {fmt % args}\n")

    # -- helpers

    def _send(self, status: int, body: dict | list | None, extra_headers: dict | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self) -> dict:
        raw = self._body()
        if not raw.strip():
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("JSON object expected")
        return data

    def _realm_path(self, path: str) -> tuple[str | None, str]:
        parts = path.split("/", 3)  # '', 'realms', realm, rest
        if len(parts) < 3 or parts[1] != "realms":
            return None, path
        return parts[2], "/" + (parts[3] if len(parts) > 3 else "")

    # -- verbs

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/") or "/"
        issuer = self.issuer
        if path == "/_test/stats":
            return self._send(200, issuer.state.snapshot())
        if path in ("/", "/health", "/_test/health"):
            return self._send(200, {"status": "ok", "realm": issuer.realm, "kid": issuer.signer.kid})
        realm, rest = self._realm_path(path)
        if realm is None:
            return self._send(404, {"error": "Unable to find matching target resource method"})
        if realm != issuer.realm:
            return self._send(404, {"error": "Realm does not exist"})
        if rest == "/":
            return self._send(200, issuer.realm_info())
        if rest == "/.well-known/openid-configuration":
            return self._send(200, issuer.discovery())
        if rest == "/protocol/openid-connect/certs":
            return self._send(200, {"keys": [issuer.signer.jwk]})
        if rest == "/protocol/openid-connect/token":
            return self._send(405, {"error": "RESTEASY003650: No resource method found for GET, return 405 with Allow header"})
        return self._send(404, {"error": "Unable to find matching target resource method"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/") or "/"
        issuer = self.issuer
        if path.startswith("/_test/"):
            return self._test_post(path)
        realm, rest = self._realm_path(path)
        if realm is None:
            self._body()
            return self._send(404, {"error": "Unable to find matching target resource method"})
        if realm != issuer.realm:
            self._body()
            return self._send(404, {"error": "Realm does not exist"})
        if rest != "/protocol/openid-connect/token":
            self._body()
            return self._send(404, {"error": "Unable to find matching target resource method"})

        raw = self._body()
        fault = issuer.state.take_fault()
        if fault is not None:
            sleep, status, body = fault
            if sleep:
                time.sleep(sleep)
            if status:
                return self._send(
                    status,
                    body if body is not None else {"error": "temporarily_unavailable", "error_description": "Injected fault"},
                )
        client, grant = "-", "-"
        try:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise OAuthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
            try:
                parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise OAuthError(400, "invalid_request", "Body is not form-encoded") from None
            form = {key: values[0] for key, values in parsed.items()}
            grant = form.get("grant_type") or "-"
            client = form.get("client_id") or "-"
            auth = self.headers.get("Authorization")
            if auth and auth.lower().startswith("basic "):
                try:
                    client = unquote(base64.b64decode(auth.split(None, 1)[1]).decode().partition(":")[0]) or "-"
                except Exception:  # noqa: BLE001 - reported by issuer.token below
                    pass
            response = issuer.token(form, auth, self.client_address[0])
        except OAuthError as exc:
            issuer.state.count(issuer.state.refused, client, grant)
            return self._send(exc.status, exc.body)
        issuer.state.count(issuer.state.issued, client, grant)
        return self._send(200, response)

    def _test_post(self, path: str) -> None:
        issuer = self.issuer
        state = issuer.state
        try:
            body = self._json_body()
        except ValueError as exc:
            return self._send(400, {"error": "invalid_request", "error_description": f"bad JSON: {exc}"})
        try:
            if path == "/_test/reset":
                state.reset()
                return self._send(200, state.snapshot())
            if path == "/_test/ttl":
                with state.lock:
                    if "seconds" in body:
                        state.access_ttl = None if body["seconds"] is None else int(body["seconds"])
                    if "refresh_seconds" in body:
                        state.refresh_ttl = None if body["refresh_seconds"] is None else int(body["refresh_seconds"])
                return self._send(200, {"access_ttl": issuer.access_ttl(), "refresh_ttl": issuer.refresh_ttl()})
            if path == "/_test/fault":
                with state.lock:
                    state.fault_count = int(body.get("count", 1))
                    state.fault_sleep = float(body.get("sleep") or 0)
                    state.fault_status = int(body["status"]) if body.get("status") else None
                    state.fault_body = body.get("body")
                return self._send(200, state.snapshot())
            if path == "/_test/mint":
                return self._send(200, issuer.mint(body))
        except OAuthError as exc:
            return self._send(exc.status, exc.body)
        except (TypeError, ValueError) as exc:
            return self._send(400, {"error": "invalid_request", "error_description": str(exc)})
        return self._send(404, {"error": "Unable to find matching target resource method"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("JGS_OIDC_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("JGS_OIDC_PORT", "8180")))
    parser.add_argument("--realm", default=None, help="realm name (default: from the realm file)")
    parser.add_argument("--realm-file", type=Path, default=HERE / "oidc_realm.json")
    parser.add_argument("--key-file", type=Path, required=True, help="PEM RSA key, created if missing")
    parser.add_argument("--public-url", default=None, help="base URL used in 'iss' (default http://HOST:PORT)")
    args = parser.parse_args(argv)

    config = RealmConfig(args.realm_file.resolve())
    realm = args.realm or config.get().get("realm", "jobbergate-local")
    signer = Signer(load_or_create_key(args.key_file))
    issuer = Issuer(args.public_url or f"http://{args.host}:{args.port}", realm, signer, config)
    Handler.issuer = issuer
    server = Server((args.host, args.port), Handler)
    sys.stderr.write(f"oidc issuer {issuer.issuer_url} kid={signer.kid} pid={os.getpid()}\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
