"""Synthesis end to end over HTTP against the embedded `transformers serve` with the real tiny model."""

import json
import subprocess

import pytest

from genpi.config import SynthConfig
from genpi.synth.pipeline import synthesize
from genpi.synth.store import load_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("prompt", ["examples/bash_agent.txt", "examples/support_agent.txt"])
def test_embedded_server_makes_complete_records(prompt, tmp_path, smol_path):
    seeds = prompt.replace(".txt", ".seeds.txt")
    config = SynthConfig(prompt=prompt, out=str(tmp_path / "run"), num_inputs=5, inputs_per_call=4,
                         seed_inputs=seeds, max_turns=2, max_tokens=32, concurrency=8, seed=1)
    # Keep only three seeds so that the synth model has to propose the rest.
    few = tmp_path / "seeds.txt"
    few.write_text("\n".join(open(seeds).read().splitlines()[:3]) + "\n")
    config.seed_inputs = str(few)
    synthesize(config)

    info, ds = load_run(tmp_path / "run")
    complete = [r for r in ds if r["finish"] != "error" and sum(m["role"] == "assistant" for m in r["dialogue"]) >= 2]
    assert len(complete) >= 4, [(r["finish"], r["meta"]["error"]) for r in ds]
    for r in complete:
        assert r["as_is"] and r["to_be"] and r["reason"]
        assert r["to_be"] == r["dialogue"][1]["content"]
    calls = [json.loads(l) for l in open(tmp_path / "run" / "inputs.jsonl")]
    assert any(c["call"] >= 0 for c in calls), "the synth model was asked for inputs"
    assert info["endpoint"] == "embedded transformers serve"
    # the server was stopped: no process is left serving on its port
    assert not _server_pids(tmp_path / "run")


def test_killed_synth_leaves_no_server_behind(tmp_path, smol_path):
    """SIGKILL cannot be caught: the server dies with its parent through PR_SET_PDEATHSIG."""
    import os
    import signal
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "genpi", "synth", "--prompt", "examples/support_agent.txt",
                             "--out", str(out), "--num-inputs", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not _server_pids(out):
        time.sleep(0.5)
    assert _server_pids(out), "the server never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _server_pids(out):
        time.sleep(0.5)
    assert not _server_pids(out), "orphan server left running"


def _server_pids(run_dir) -> str:
    """Pids of processes serving on the port the run's server.log names ('' when none or not started)."""
    import re

    log = run_dir / "server.log"
    m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace")) if log.exists() else None
    if not m:
        return ""
    return subprocess.run(["pgrep", "-f", "--", f"--port {m.group(1)} "], capture_output=True, text=True).stdout.strip()
