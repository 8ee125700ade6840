"""The embedded server: an OpenAI-compatible ``/v1/chat/completions`` over genpi's engine, and the context
manager that runs it as a child process.

``genpi serve --adapter DIR [--adapter DIR2 ...]`` (or ``python -m genpi.server``, or ``genpi.serve(...)``) serves
the base model under the name it was given and each adapter, merged into its own copy of the base, under its
directory's name, with the student context it was trained with put before every conversation. Requests from concurrent
connections are gathered into batches by one engine thread; a prompt prefix shared by several requests is
computed once (:mod:`genpi.engine`), and ``usage.prompt_tokens_details.cached_tokens`` says how many of a
request's prompt tokens were reused.

Supported: ``messages``, ``model``, ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop``, and vLLM's ``add_generation_prompt`` / ``continue_final_message`` (leave the final message open
and continue it: with an open user turn the model writes the user's message); anything else that changes the reply's shape (``stream``, ``n`` > 1, ``tools``, ``logprobs``,
``response_format``) is refused with a 400 rather than ignored. Omitted sampling settings come from the model's
generation config, as vLLM does.

The process stops at once on SIGTERM or SIGINT (requests in flight are dropped: their callers are going away
too), and, started by :class:`LocalServer`, it is killed by the kernel when its parent dies, however it dies.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from genpi.errors import UserError

UNSUPPORTED = ("stream", "tools", "tool_choice", "functions", "logprobs", "top_logprobs", "response_format",
               "logit_bias")


# --- serving


@dataclass
class Served:
    """One model name the server answers for."""

    name: str
    model: object
    tokenizer: object
    engine: object
    context: list[dict] = field(default_factory=list)  # messages put before every request (an adapter's student context)
    temperature: float = 0.0
    top_p: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the tokenizer (shared by the served models)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Backend:
    """Loaded models, each with its engine (which batches the requests of concurrent connections)."""

    def __init__(self, served: dict[str, Served], log=None, log_every: float = 10.0):
        self.served = served
        self.log = log or (lambda line: None)
        threading.Thread(target=self._report, args=(log_every,), daemon=True, name="genpi-stats").start()

    def complete(self, body: dict) -> dict:
        """An OpenAI chat completion response for a request body (raises :class:`BadRequest`)."""
        from genpi.engine import Request

        if not isinstance(body, dict):
            raise BadRequest(400, "the request body must be a JSON object")
        name = body.get("model")
        if name not in self.served:
            raise BadRequest(404, f"model {name!r} is not served here; served: {', '.join(self.served)}")
        s = self.served[name]
        for key in UNSUPPORTED:
            if body.get(key) not in (None, False, [], ""):
                raise BadRequest(400, f"{key!r} is not supported by the genpi server")
        if body.get("n", 1) != 1:
            raise BadRequest(400, "only n = 1 is supported by the genpi server")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
                for m in messages):
            raise BadRequest(400, "messages must be a non-empty list of {role: system|user|assistant, content: text}")
        messages = [*s.context, *({"role": m["role"], "content": m["content"]} for m in messages)]
        generation_prompt, continue_final = body.get("add_generation_prompt", True), body.get("continue_final_message", False)
        for key, value in (("add_generation_prompt", generation_prompt), ("continue_final_message", continue_final)):
            if not isinstance(value, bool):
                raise BadRequest(400, f"{key} must be true or false")
        if generation_prompt and continue_final:
            raise BadRequest(400, "continue_final_message needs add_generation_prompt false: the final message is "
                                  "continued, no new turn is opened")
        with s.lock:
            text = s.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                   continue_final_message=continue_final)
            ids = s.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = s.engine.max_context - len(ids)
        if room < 1:
            raise BadRequest(400, f"the prompt has {len(ids)} tokens: more than the model's context ({s.engine.max_context})")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or min(room, 1024)
        temperature, top_p, seed = body.get("temperature"), body.get("top_p"), body.get("seed")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise BadRequest(400, "stop must be a string or a list of non-empty strings")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(400, "max_tokens must be a positive integer")
        for key, value in (("temperature", temperature), ("top_p", top_p)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise BadRequest(400, f"{key} must be a number >= 0")
        request = Request(ids=ids, max_new_tokens=min(max_tokens, room),
                          temperature=float(s.temperature if temperature is None else temperature),
                          top_p=float(s.top_p if top_p is None else top_p) or 1.0,
                          seed=seed if isinstance(seed, int) else None, stop=tuple(stop))
        c = s.engine.submit(request).result()
        with s.lock:
            reply = s.tokenizer.decode(c.ids, skip_special_tokens=True)
        cuts = [i for i in (reply.find(x) for x in stop) if i >= 0]
        if cuts:  # the stop string and what follows it are not part of the reply (OpenAI semantics)
            reply = reply[: min(cuts)]
        out_tokens = len(c.ids) + (c.finish_reason == "stop")  # the stop token was generated too
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "finish_reason": c.finish_reason, "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": out_tokens,
                      "total_tokens": c.prompt_tokens + out_tokens,
                      "prompt_tokens_details": {"cached_tokens": c.cached_tokens}},
        }

    def _report(self, every: float) -> None:
        """One log line per interval with work done: readable in a log file, quiet when idle."""
        last: dict[str, tuple] = {}
        while True:
            time.sleep(every)
            for name, s in self.served.items():
                st = s.engine.stats
                now = (st.requests, st.generated_tokens, st.prefill_tokens, st.cached_tokens, time.monotonic(),
                       st.prefill_seconds, st.decode_seconds, st.steps)
                before = last.get(name)
                last[name] = now
                if before and now[0] != before[0]:
                    dt = now[4] - before[4]
                    steps = max(1, now[7] - before[7])
                    self.log(f"{name}: {now[0] - before[0]} requests, {(now[1] - before[1]) / dt:.1f} tokens/s out, "
                             f"{(now[2] - before[2]) / dt:.0f} tokens/s prefilled, {now[3] - before[3]} prompt tokens "
                             f"reused in {dt:.0f} s; prefill {now[5] - before[5]:.1f} s, {steps} steps of "
                             f"{(now[6] - before[6]) / steps * 1000:.0f} ms ({(now[1] - before[1]) / steps:.1f} rows)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai SDK reuses its connections
    backend: Backend

    def log_message(self, format, *args):  # one line per request is too many for a synthesis run's log
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "server_error")
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": name, "object": "model", "owned_by": "genpi"} for name in self.backend.served]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        except ValueError:
            return self._error(400, "the request body is not valid JSON")
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        try:
            self._send(200, self.backend.complete(body))
        except BadRequest as e:
            self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - the client gets a 500 with the reason; the server goes on
            self._error(500, f"{type(e).__name__}: {e}")


def load_served(model_name: str, adapters: list[str], served_name: str | None = None, rows: int = 16) -> dict[str, Served]:
    """The base model under ``served_name`` (default: its name as given) and each adapter, merged, under its
    directory's name; each with an engine of ``rows`` rows."""
    import torch

    from genpi.engine import Engine
    from genpi.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lock = threading.Lock()  # one tokenizer for every served model: fast tokenizers are not safe across threads

    def decode(ids):
        with lock:
            return tokenizer.decode(ids, skip_special_tokens=True)

    def one(name, model, context=()):
        model.to(device).eval()
        cfg = model.generation_config
        sampled = bool(getattr(cfg, "do_sample", False))
        eos = getattr(cfg, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tokenizer.eos_token_id}
        engine = Engine(model, eos_ids - {None}, tokenizer.pad_token_id, rows=rows, decode=decode)
        return Served(name, model, tokenizer, engine, list(context), lock=lock,
                      temperature=float(cfg.temperature or 1.0) if sampled else 0.0,
                      top_p=float(cfg.top_p or 1.0) if sampled else 1.0)

    from genpi.adapter import read_adapter, require_mergeable
    from genpi.models import load_adapter

    for path in adapters:  # before any model loads
        adapter_dir, peft_config, _ = read_adapter(path)
        require_mergeable(adapter_dir, peft_config, "served (`genpi serve` merges every adapter)")
    served = {served_name or model_name: one(served_name or model_name, load_model(model_name))}
    for path in adapters:
        adapter_dir, _, info = read_adapter(path)
        if adapter_dir.name in served:
            raise UserError(f"--adapter {path}: another served model is already named {adapter_dir.name!r}; "
                            "serve adapters from directories of different names")
        merged = load_adapter(load_model(model_name), adapter_dir).merge_and_unload()
        served[adapter_dir.name] = one(adapter_dir.name, merged, info.student_context)
    return served


def serve_forever(served: dict[str, Served], host: str, port: int, log=None) -> None:
    """Answer on ``host:port`` until SIGTERM or SIGINT, which stop the process at once."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    handler = type("Handler", (_Handler,), {"backend": Backend(served, log=log)})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True

    def stop(signum, frame):
        log(f"stopping on signal {signum}")
        os._exit(0)  # no graceful drain: in-flight requests would keep both cores busy for nobody

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"genpi server on http://{host}:{port}/v1 serving {', '.join(served)}")
    httpd.serve_forever()


def serve(adapters: list[str | Path] = (), model: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          rows: int = 16, served_name: str | None = None) -> None:
    """Serve the base model and each adapter (merged) until SIGTERM or SIGINT.

    ``model`` defaults to the adapters' base model (from their ``genpi.json``), else the embedded default.
    """
    from genpi.adapter import read_adapter
    from genpi.models import resolve_model

    bases = {read_adapter(a)[2].base_model or "default" for a in adapters}
    if model is None:
        if len(bases) > 1:
            raise UserError(f"the adapters were trained on different base models ({', '.join(sorted(bases))}): "
                            "serve them separately, or pass --model")
        model = next(iter(bases), "default")
    for base in bases:
        if resolve_model(base) != resolve_model(model):
            raise UserError(f"an adapter was trained on {base!r}, not --model {model!r}: serve it with its base model")
    if port < 0 or rows < 1:
        raise UserError("--port must be 0 or more and --rows at least 1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    serve_forever(load_served(model, [str(a) for a in adapters], served_name, rows), host, port)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The serving flags, shared by ``genpi serve`` and ``python -m genpi.server``."""
    ap.add_argument("--adapter", action="append", default=[], metavar="DIR",
                    help="adapter directory from `genpi train`, served merged under its directory's name (repeatable)")
    ap.add_argument("--model", default=None,
                    help="base model: 'default', a directory or a Hub id (default: the adapters' base model)")
    ap.add_argument("--served-name", default=None, help="name the base model answers to (default: --model)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    ap.add_argument("--rows", type=int, default=16, help="requests decoded together at most (default: 16)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m genpi.server", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    serve(args.adapter, args.model, args.host, args.port, args.rows, args.served_name)


# --- running it as a child process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux only: the kernel kills the server when the process that started it dies, however it dies. SIGKILL,
    # not SIGTERM: nothing is worth finishing for a parent that is gone.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


class LocalServer:
    """The genpi server on a free loopback port, as a context manager: started, health-checked, always stopped.

    Args:
        model: the model to serve (see ``genpi.models.resolve_model``); it answers to this name.
        log_path: where the server's output goes (read back for the error message when it fails to start).
        startup_timeout: seconds to wait for ``/health``.
        adapters: adapter directories to serve beside the base model.
    """

    def __init__(self, model: str, log_path: str | Path | None = None, startup_timeout: float = 180.0,
                 adapters: list[str] | None = None):
        self.model = model
        self.adapters = list(adapters or [])
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("OPENAI_API_KEY", None)  # the local server needs no key; it never gets one
        cmd = [sys.executable, "-m", "genpi.server", "--model", self.model, "--port", str(self.port)]
        for a in self.adapters:
            cmd += ["--adapter", a]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=_die_with_parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise UserError(f"the embedded server exited with code {code} at start: {self._log_tail()} "
                                f"(log: {self.log_path})")
            if self.healthy():
                return self
            time.sleep(0.25)
        self.stop()
        raise UserError(f"the embedded server did not answer /health within {self.startup_timeout:.0f}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return "no log"
        lines = [l for l in self.log_path.read_text(errors="replace").splitlines() if l.strip()]
        return lines[-1][:300] if lines else "empty log"

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
