"""The HTTP server: OpenAI's ``/v1/chat/completions`` and ``/v1/models``, and ``/health``, over genpi's engine.

``genpi serve --adapter DIR [--adapter DIR2 ...]`` (or ``python -m genpi.serving.server``, or ``genpi.serve(...)``)
serves the base model under the name it was given and each adapter, merged into its own copy of the base, under its
directory's name, with the student context it was trained with put before every conversation. Requests from
concurrent connections are gathered into batches by one engine thread per model; a prompt prefix shared by several
requests is computed once (:mod:`genpi.serving.engine`), and ``usage.prompt_tokens_details.cached_tokens`` says how
many of a request's prompt tokens were reused.

Supported: ``messages``, ``model``, ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop``, ``n``, ``logprobs`` / ``top_logprobs``, ``stream`` with ``stream_options.include_usage``
(server-sent events), and vLLM's ``add_generation_prompt`` / ``continue_final_message`` (leave the final message
open and continue it: with an open user turn the model writes the user's message); what else would change the reply's shape (``tools``, ``response_format``, ...) is refused
with a 400 rather than ignored (:mod:`genpi.serving.protocol`). Omitted sampling settings come from the model's
generation config, as vLLM does. A client that disconnects has its request cancelled in the engine; past
``max_waiting`` queued requests a model answers 503 with ``Retry-After``. Each request is logged on one line with
its tokens and timing.

The process stops at once on SIGTERM or SIGINT (requests in flight are dropped: their callers are going away
too), and, started by :class:`genpi.serving.local.LocalServer`, it is killed by the kernel when its parent dies.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from genpi.errors import UserError
from genpi.serving.backend import Backend, ClientGone, load_served, parse_named
from genpi.serving.protocol import APIError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai SDK reuses its connections
    backend: Backend

    def log_message(self, format, *args):  # the request log below says more, on one line per request
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: APIError) -> None:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        self._send(error.status, error.body(), headers)

    def _alive(self) -> bool:
        """Whether the client still holds its connection (a closed socket reads as end of file at once)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def do_GET(self):
        if self.path == "/health":
            self._send(200, self.backend.health())
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "genpi"} for name in self.backend.served]})
        else:
            self._error(APIError(404, f"no route {self.path}"))

    def do_POST(self):
        started = time.perf_counter()
        status, call, note = 200, None, ""
        try:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            except ValueError:
                raise APIError(400, "the request body is not valid JSON") from None
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise APIError(404, f"no route {self.path}")
            call = self.backend.start(body)
            if call.params.stream:
                self._stream(call)
            else:
                self._send(200, call.reply(self._alive))
            self.backend.finished(call)
        except APIError as e:
            status, note = e.status, str(e)
            try:
                self._error(e)
            except OSError:  # the client is gone already
                self.close_connection = True
        except ClientGone:
            status, note = 499, "client gone: cancelled in the engine"  # nginx's code for a closed request
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            status, note = 499, "client gone while writing: cancelled in the engine"
            self.close_connection = True
            if call is not None:
                call.cancel()
        except Exception as e:  # noqa: BLE001 - the client gets a 500 with the reason; the server goes on
            status, note = 500, f"{type(e).__name__}: {e}"
            if call is not None:
                call.cancel()
            try:
                self._error(APIError(500, note))
            except OSError:
                pass
        finally:
            detail = call.summary() if call is not None else ""
            self.backend.log(" ".join(x for x in (f"{self.command} {self.path} {status}", detail,
                                                   f"total={time.perf_counter() - started:.3f}s", note) if x))

    def _stream(self, call) -> None:
        """Server-sent events, one ``data:`` line per chunk, ``data: [DONE]`` last (chunked transfer encoding, so
        the connection stays open for the client's next request)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        try:
            for chunk in call.stream(self._alive):
                send(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # noqa: BLE001 - headers are sent: the error goes in the stream, as OpenAI's does
            call.cancel()
            send(b"data: " + json.dumps(APIError(500, f"{type(e).__name__}: {e}").body()).encode() + b"\n\n")
        send(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Connections a burst of clients may open before the server accepts them (socketserver's default, 5, resets
    # connections past it when the accepting thread is slow: seen with 16 clients on a busy CPU).
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:
        """A client that resets or drops its connection (a pooled keep-alive one, say) is gone, not a server fault."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve_forever(served: dict, host: str, port: int, log=None, max_waiting: int = 64) -> None:
    """Answer on ``host:port`` until SIGTERM or SIGINT, which stop the process at once."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    handler = type("Handler", (_Handler,), {"backend": Backend(served, log=log, max_waiting=max_waiting)})
    httpd = _HTTPServer((host, port), handler)

    def stop(signum, frame):
        log(f"stopping on signal {signum}")
        os._exit(0)  # no graceful drain: in-flight requests would keep both cores busy for nobody

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"genpi server on http://{host}:{port}/v1 serving {', '.join(served)}")
    httpd.serve_forever()


def serve(adapters: list[str | Path] = (), model: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          rows: int = 16, served_name: str | None = None, max_waiting: int = 64, prompts: list[str] = (),
          merge: bool = False, threads: int = 0) -> None:
    """Serve the base model, each adapter (``NAME=DIR`` or ``DIR``) and each prompt (``NAME=FILE``) until SIGTERM
    or SIGINT (see :func:`genpi.serving.backend.load_served`).

    ``model`` defaults to the adapters' base model (from their ``genpi.json``), else the embedded default.
    """
    from genpi.adapter import read_adapter
    from genpi.models import resolve_model

    adapters = [str(a) for a in adapters]
    bases = {read_adapter(path)[2].base_model or "default" for _, path in parse_named(adapters, "--adapter")}
    if model is None:
        if len(bases) > 1:
            raise UserError(f"the adapters were trained on different base models ({', '.join(sorted(bases))}): "
                            "serve them separately, or pass --model")
        model = next(iter(bases), "default")
    for base in bases:
        if resolve_model(base) != resolve_model(model):
            raise UserError(f"an adapter was trained on {base!r}, not --model {model!r}: serve it with its base model")
    if port < 0 or rows < 1 or max_waiting < 0 or threads < 0:
        raise UserError("--port, --max-waiting and --threads must be 0 or more and --rows at least 1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if threads:
        import torch

        torch.set_num_threads(threads)
    serve_forever(load_served(model, adapters, served_name, rows, list(prompts), merge), host, port,
                  max_waiting=max_waiting)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The serving flags, shared by ``genpi serve`` and ``python -m genpi.serving.server``."""
    ap.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                    help="adapter directory from `genpi train`, served under NAME (default: the directory's name); "
                    "repeatable: the adapters share one base model and decode in the same batches")
    ap.add_argument("--prompt", action="append", default=[], metavar="NAME=FILE",
                    help="serve the base model with this prompt file before every conversation under NAME (the "
                    "prompted arm; its KV is computed once and cached); repeatable")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default 0: torch's choice; 1 on a CPU shared with other jobs, where "
                    "spinning threads cost several times their gain)")
    ap.add_argument("--merge", action="store_true",
                    help="merge each adapter into its own copy of the base instead (no per-token LoRA work, one "
                    "model copy and engine per adapter)")
    ap.add_argument("--model", default=None,
                    help="base model: 'default', a directory or a Hub id (default: the adapters' base model)")
    ap.add_argument("--served-name", default=None, help="name the base model answers to (default: --model)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    ap.add_argument("--rows", type=int, default=16, help="requests decoded together at most (default: 16)")
    ap.add_argument("--max-waiting", type=int, default=64,
                    help="requests a model may hold waiting for a row; past it, 503 with Retry-After (default: 64)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m genpi.serving.server", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    serve(args.adapter, args.model, args.host, args.port, args.rows, args.served_name, args.max_waiting,
          args.prompt, args.merge, args.threads)


if __name__ == "__main__":
    main()
