"""A local HTTP server that misbehaves on purpose, for download fault tests: the
failure modes a real Stash cannot be made to produce on demand."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that stopped reading, on purpose
            super().handle_error(request, client_address)


class FaultServer:
    """`script(request_number, handler)` decides each response; the default serves
    `payload` honestly with Range support."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.requests: list[dict] = []
        self.script: Optional[Callable] = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                number = len(outer.requests)
                if outer.script and outer.script(number, self) is not None:
                    return
                outer.serve(self)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if outer.raw_graphql:
                    outer.answer(self, *outer.raw_graphql(body))
                    return
                answer = outer.graphql(body) if outer.graphql else {"data": {}}
                outer.answer(self, json.dumps(answer).encode(), {"Content-Type": "application/json"})

        self.graphql: Optional[Callable[[dict], dict]] = None
        # (body, headers) as sent, for answers that are not JSON or not honest
        self.raw_graphql: Optional[Callable[[dict], tuple]] = None
        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- building blocks for scripts -------------------------------------------------
    def serve(
        self,
        handler,
        cut_at: Optional[int] = None,
        stall: float = 0.0,
        ignore_range: bool = False,
        wrong_offset: bool = False,
        etag: str = '"v1"',
    ) -> bool:
        start = 0
        requested = handler.headers.get("Range")
        if requested and not ignore_range:
            start = int(requested.split("=")[1].split("-")[0])
            if wrong_offset:
                start = max(0, start - 10)
            body = self.payload[start:]
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            body = self.payload
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", etag)
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        send = body if cut_at is None else body[: max(0, cut_at - start)]
        if stall:
            half = len(send) // 2
            handler.wfile.write(send[:half])
            handler.wfile.flush()
            time.sleep(stall)
            send = send[half:]
        handler.wfile.write(send)
        handler.wfile.flush()
        if cut_at is not None:
            handler.close_connection = True
        return True

    @staticmethod
    def answer(handler, data: bytes, headers: dict, code: int = 200) -> None:
        handler.send_response(code)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client stopped reading: what a bounded reader does

    @staticmethod
    def status(handler, code: int, headers: Optional[dict] = None) -> bool:
        handler.send_response(code)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True
