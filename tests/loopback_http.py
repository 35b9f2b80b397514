"""An HTTP server on 127.0.0.1 for tests: serves fixed bodies by path, answers 404 for any
other path, and records every request it answered."""

import http.server
import threading
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: str
    status: int


class LoopbackServer:
    """`with LoopbackServer() as server:` serves `server.bodies[path]` at server.url(path)."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def count(self, path: str, query: str = "", *, method: str = "GET", status: int = 200,
              since: int = 0) -> int:
        """How many requests for path with exactly this query got this answer, counting
        from request number `since`."""
        with self._lock:
            wanted = Request(method, path, query, status)
            return sum(r == wanted for r in self.requests[since:])

    def _answer(self, handler: http.server.BaseHTTPRequestHandler, with_body: bool) -> None:
        url = urllib.parse.urlsplit(handler.path)
        body = self.bodies.get(url.path)
        status = 404 if body is None else 200
        with self._lock:
            self.requests.append(Request(handler.command, url.path, url.query, status))
        body = b"not found" if body is None else body
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if with_body:
            handler.wfile.write(body)

    def _handler(self) -> type:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self, with_body=True)

            def do_HEAD(self) -> None:
                server._answer(self, with_body=False)

            def log_message(self, format: str, *args) -> None:  # quiet: requests are recorded
                pass

        return Handler
