"""An HTTP proxy in front of a real service that a test can make slow, failing or garbled.

Only loopback: it listens on 127.0.0.1 and forwards to the stack's own loopback services.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


class FaultyProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"  # pass | slow | status | garbage | drop | refused
        self.delay = 0.0
        self.status = 503
        self.requests = 0
        # rewrite(method, path, body) -> the body to answer instead of upstream's, or None to pass it on
        self.rewrite: Optional[Callable[[str, str, bytes], Optional[bytes]]] = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                mode = proxy.mode
                if mode == "slow":
                    time.sleep(proxy.delay)
                if mode == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode == "status":
                    return self._reply(proxy.status, b'{"detail":"injected failure"}', "application/json")
                if mode == "garbage":
                    return self._reply(200, b"<html><body>502 Bad Gateway from a confused proxy", "text/html")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                try:
                    upstream = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                                timeout=60, allow_redirects=False)
                except requests.RequestException:
                    return self._reply(502, b"upstream unreachable", "text/plain")
                content = upstream.content
                if proxy.rewrite is not None:
                    content = proxy.rewrite(self.command, self.path, content) or content
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _reply(self, status: int, content: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.handler = Handler
        self.server: ThreadingHTTPServer | None = None
        self._listen(0)
        self.url = f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self.handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, mode: str, delay: float = 0.0, status: int = 503) -> None:
        """mode "refused" closes the port (connection refused); any other mode opens it again."""
        self.mode, self.delay, self.status = mode, delay, status
        if mode == "refused":
            self.close()
        elif self.server is None:
            self._listen(self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
