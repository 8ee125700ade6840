"""The genpi server as a child process on a free loopback port: started, health-checked, always stopped (the
embedded server of ``genpi synth``)."""

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
        flags: further ``genpi serve`` flags (e.g. ``["--rows", "4"]``).
    """

    def __init__(self, model: str, log_path: str | Path | None = None, startup_timeout: float = 180.0,
                 adapters: list[str] | None = None, flags: list[str] | None = None):
        self.model = model
        self.adapters = list(adapters or [])
        self.flags = list(flags or [])
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("OPENAI_API_KEY", None)  # the local server needs no key; it never gets one
        cmd = [sys.executable, "-m", "genpi.serving.server", "--model", self.model, "--port", str(self.port)]
        for a in self.adapters:
            cmd += ["--adapter", a]
        cmd += self.flags
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

