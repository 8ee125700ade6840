"""A small OpenAI-compatible chat server on loopback, for tests that need real HTTP but no model.

It answers ``POST /v1/chat/completions`` with ``FakeChatClient``'s rules, after an optional delay, and can be
told to fail: ``fail_codes`` is a list of HTTP status codes (or ``"hang"`` to sleep past the client's timeout)
used for the first requests, one per request.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from genpi.synth.client import FakeChatClient


class ChatServer:
    def __init__(self, delay: float = 0.0, fail_codes=(), hang_seconds: float = 3.0):
        self.fake = FakeChatClient()
        self.delay = delay
        self.fail_codes = list(fail_codes)
        self.hang_seconds = hang_seconds
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"status": "ok"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    failure = server.fail_codes.pop(0) if server.fail_codes else None
                if failure == "hang":
                    time.sleep(server.hang_seconds)
                    failure = 500
                if failure:
                    return self._send(failure, {"error": {"message": f"injected {failure}", "type": "test"}})
                time.sleep(server.delay)
                r = server.fake.chat(body["messages"], model=body["model"], temperature=body.get("temperature", 1.0),
                                     max_tokens=body.get("max_tokens", 16), seed=body.get("seed"))
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": r.text}}],
                    "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                              "total_tokens": r.prompt_tokens + r.completion_tokens},
                })

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

