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


def _synth(base_url, out, log, key_flag=False):
    """`genpi synth` in a subprocess, given the key by environment variable or (``key_flag``) by --api-key."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    if not key_flag:
        env["OPENAI_API_KEY"] = SECRET
    cmd = [sys.executable, "-m", "genpi", "synth", "--prompt", "examples/bash_agent.txt", "--out", str(out),
           "--num-inputs", str(N), "--max-turns", "3", "--concurrency", "2", "--base-url", base_url]
    cmd += ["--api-key", SECRET] if key_flag else []
    # The child sets its own signal handling: started from a background shell, SIGINT would be ignored.
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_records(path: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while _lines(path) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_and_resume(tmp_path):
    out, logfile = tmp_path / "run", tmp_path / "log.txt"
    with ChatServer(delay=0.05) as srv, open(logfile, "ab") as log:
        proc = _synth(srv.base_url, out, log)
        _wait_for_records(out / "records.jsonl", 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = _lines(out / "records.jsonl")
        assert 3 <= done_before < N, "the kill must land mid-run"
        assert {k.lower(): v for k, v in srv.headers[0].items()}["authorization"] == f"Bearer {SECRET}"  # the key was really used

        rerun = _synth(srv.base_url, out, log, key_flag=True)
        assert rerun.wait(timeout=120) == 0
        assert {k.lower(): v for k, v in srv.headers[-1].items()}["authorization"] == f"Bearer {SECRET}"

    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == N
    assert len({r["id"] for r in rows}) == N
    assert sorted(r["index"] for r in rows) == list(range(N))

    for f in list(out.rglob("*")) + [logfile]:
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f"the API key leaked into {f.name}"


def test_ctrl_c_stops_without_waiting_for_calls_in_flight_and_the_rerun_completes(tmp_path):
    out, logfile = tmp_path / "run", tmp_path / "log.txt"
    # Every call fails from the interrupt on: a run that kept working after Ctrl-C would go on calling and
    # retrying for the records in flight; a stopped one sends nothing new.
    with ChatServer(delay=0.5) as srv, open(logfile, "ab") as log:
        proc = _synth(srv.base_url, out, log)
        _wait_for_records(out / "records.jsonl", 1)
        srv.fail_codes.extend([500] * 50)
        sent = len(srv.requests)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        # at most the calls already on their way: --concurrency 2 records, each with a dialogue call and a side call
        assert len(srv.requests) - sent <= 4
        done = _lines(out / "records.jsonl")
        assert 1 <= done < N
        srv.fail_codes.clear()
        assert _synth(srv.base_url, out, log).wait(timeout=180) == 0
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == N and len({r["id"] for r in rows}) == N
    assert "interrupted; finished work is saved" in logfile.read_text()
