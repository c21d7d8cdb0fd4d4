"""The fakes of tests/fakes.py served to another process over HTTP on loopback: one listener per
fake peer (API, OIDC issuer, slurmrestd), each handing the requests it is sent to `requests`, where
the `responses` mock holding the fakes answers them. A tool run as its own process, configured with
these listeners' URLs, then talks to the fakes as it would to the real peers, and its memory and time
are its own, not mixed with the fakes'.

    with responses.RequestsMock() as rsps, LoopbackFakes([API, ISSUER, SLURM]) as fakes:
        api = FakeJobbergate(rsps, FakeIssuer(rsps))
        ...  # a configuration with fakes.url(API), fakes.url(ISSUER), fakes.url(SLURM)
"""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

# hop-by-hop and framing headers: the listener sets its own
NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class FakeListener(ThreadingHTTPServer):
    """A loopback listener for one fake peer's origin (http://api.test, say)."""

    daemon_threads = True

    def __init__(self, origin: str, session: requests.Session):
        super().__init__(("127.0.0.1", 0), ForwardingHandler)
        self.origin = origin
        self.session = session


class ForwardingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real peers
    disable_nagle_algorithm = True  # the body goes in a second write: no delayed-ACK wait per answer
    server: FakeListener

    def forward(self) -> None:
        body: Any = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            body = body.decode("ascii")  # as requests hands a form to the fakes: text
        headers = {name: value for name, value in self.headers.items() if name.lower() not in NOT_FORWARDED}
        answer = self.server.session.request(self.command, self.server.origin + self.path, data=body or None,
                                             headers=headers, allow_redirects=False)
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in NOT_FORWARDED:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward  # noqa: N815 (http.server's names)

    def log_message(self, *args: Any) -> None:
        """Quiet: the fakes keep the record of what they were asked."""


class LoopbackFakes:
    """A listener for each origin among `fake_urls`, serving while the context is open."""

    def __init__(self, fake_urls: list[str]):
        session = requests.Session()
        session.trust_env = False  # this process's own proxy variables never apply here
        self.listeners = {origin: FakeListener(origin, session) for origin in {origin_of(url) for url in fake_urls}}

    def __enter__(self) -> LoopbackFakes:
        for listener in self.listeners.values():
            threading.Thread(target=listener.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for listener in self.listeners.values():
            listener.shutdown()
            listener.server_close()

    def url(self, fake_url: str) -> str:
        """The loopback URL that reaches the fake at `fake_url`."""
        listener = self.listeners[origin_of(fake_url)]
        return f"http://127.0.0.1:{listener.server_port}" + fake_url[len(listener.origin):]
