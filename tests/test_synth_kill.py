"""A SIGKILL in the middle of `genpi synth` loses nothing finished; the rerun completes exactly; no key leaks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chat_server import ChatServer

SECRET = "sk-test-5ecret-never-written-anywhere"
N = 12


def _synth(base_url, out, log):
    env = dict(os.environ, OPENAI_API_KEY=SECRET)
    cmd = [sys.executable, "-m", "genpi", "synth", "--prompt", "examples/bash_agent.txt", "--out", str(out),
           "--num-inputs", str(N), "--max-turns", "3", "--concurrency", "2", "--base-url", base_url]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_and_resume(tmp_path):
    out, logfile = tmp_path / "run", tmp_path / "log.txt"
    with ChatServer(delay=0.05) as srv, open(logfile, "ab") as log:
        proc = _synth(srv.base_url, out, log)
        deadline = time.monotonic() + 60
        while _lines(out / "records.jsonl") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = _lines(out / "records.jsonl")
        assert 3 <= done_before < N, "the kill must land mid-run"
        assert {k.lower(): v for k, v in srv.headers[0].items()}["authorization"] == f"Bearer {SECRET}"  # the key was really used

        rerun = _synth(srv.base_url, out, log)
        assert rerun.wait(timeout=120) == 0

    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == N
    assert len({r["id"] for r in rows}) == N
    assert sorted(r["index"] for r in rows) == list(range(N))

    for f in list(out.rglob("*")) + [logfile]:
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f"the API key leaked into {f.name}"
