"""The embedded local backend: ``transformers serve`` on a free loopback port.

Started when no server URL is given, health-checked before use, and always stopped: on normal exit, on an error,
on Ctrl-C, and — through ``PR_SET_PDEATHSIG`` — even when genpi itself is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from genpi.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to the server when the process that started it dies, however it dies.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


class LocalServer:
    """``transformers serve MODEL --continuous-batching`` on 127.0.0.1, as a context manager.

    Args:
        model: a local model directory (see ``genpi.models.resolve_model``).
        log_path: where the server's output goes (for the error message when it fails to start).
        startup_timeout: seconds to wait for ``/health``.
        cache_blocks: KV-cache blocks of the continuous-batching cache (its memory cap).
    """

    def __init__(self, model: str, log_path: str | Path | None = None, startup_timeout: float = 180.0, cache_blocks: int = 64):
        self.model = model
        self.cache_blocks = cache_blocks
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("OPENAI_API_KEY", None)  # the local server needs no key; it never gets one
        cmd = [
            sys.executable, "-c", "from transformers.cli.transformers import main; main()",
            "serve", self.model, "--continuous-batching", "--host", "127.0.0.1", "--port", str(self.port),
            # Without caps the paged KV cache takes most of the machine's RAM on CPU (14 GB seen on 24 GB), and
            # every decode step pays for attention masks over all of it. 64 blocks hold 8 requests of ~2k tokens.
            "--cb-num-blocks", str(self.cache_blocks), "--cb-max-batch-tokens", "2048",
            "--device", "cpu" if not _has_cuda() else "auto",
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise UserError(f"the embedded server exited with code {code} at start: {self._log_tail()} (log: {self.log_path})")
            if self.healthy():
                return self
            time.sleep(0.5)
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
            proc.wait(timeout=15)
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


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
