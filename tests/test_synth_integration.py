"""Synthesis end to end over HTTP against the embedded genpi server with the real tiny model, and how it stops."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from genpi.config import SynthConfig
from genpi.synth.pipeline import synthesize
from genpi.synth.store import load_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("prompt", ["examples/bash_agent.txt", "examples/support_agent.txt"])
def test_embedded_server_makes_complete_records(prompt, tmp_path, smol_path):
    seeds = prompt.replace(".txt", ".seeds.txt")
    # Three seeds only, so that the model playing the user has to propose the rest.
    few = tmp_path / "seeds.txt"
    few.write_text("\n".join(open(seeds).read().splitlines()[:3]) + "\n")
    config = SynthConfig(prompt=prompt, out=str(tmp_path / "run"), num_inputs=5, seed_inputs=str(few), max_turns=2,
                         max_new_tokens=128, concurrency=8, seed=1)
    synthesize(config)

    info, ds = load_run(tmp_path / "run")
    trained = [r for r in ds if r["finish"] != "error" and len(r["dialogue"]) > 1]
    assert len(trained) >= 3, [(r["finish"], r["meta"]["error"], r["meta"]["dropped"]) for r in ds]
    for r in trained:
        assert r["as_is"] and r["to_be"] and r["reason"]
        assert r["to_be"] == r["dialogue"][1]["content"]
        assert "<END>" not in json.dumps(r["dialogue"])
    calls = [json.loads(l) for l in open(tmp_path / "run" / "inputs.jsonl")]
    assert any(c["call"] >= 0 for c in calls), "the model playing the user was asked for inputs"
    assert info.endpoint == "embedded genpi server"
    run = info.runs[-1]
    assert run["cached_prompt_tokens"] > run["prompt_tokens"] / 2  # the agent's prompt is computed once, not per call
    assert not _server_pids(tmp_path / "run")  # the server was stopped


def _start_synth(out, num_inputs=40):
    # The child sets its own signal handling: started from a background shell, SIGINT would be ignored.
    return subprocess.Popen([sys.executable, "-m", "genpi", "synth", "--prompt", "examples/bash_agent.txt",
                             "--out", str(out), "--num-inputs", str(num_inputs), "--max-new-tokens", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_work_in_flight(out) -> None:
    """Until the server has answered at least one request, so that others are being decoded."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (out / "inputs.jsonl").exists() and (out / "inputs.jsonl").stat().st_size > 0:
            return
        time.sleep(0.2)
    raise AssertionError("synthesis never got going")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_synth_leaves_no_server_behind_even_mid_request(sig, tmp_path, smol_path):
    out = tmp_path / "run"
    proc = _start_synth(out)
    _wait_for_work_in_flight(out)
    assert _server_pids(out)
    started = time.monotonic()
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _server_pids(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _server_pids(out), "orphan server left running"
    assert time.monotonic() - started < 15, "stopping took too long"
    if sig == signal.SIGTERM:
        assert code == 143 and b"terminated; finished work is saved" in proc.stderr.read()


def _server_pids(run_dir) -> str:
    """Pids of processes serving on the port the run's server.log names ('' when none or not started)."""
    log = run_dir / "server.log"
    m = re.search(r"genpi server on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace")) if log.exists() else None
    if not m:
        return ""
    return subprocess.run(["pgrep", "-f", "--", f"--port {m.group(1)}"], capture_output=True, text=True).stdout.strip()


def test_sandbox_env_runs_the_agents_commands_and_records_which_turns_were_real(tmp_path, smol_path):
    from genpi.environment import find_command
    from genpi.sandbox import SandboxUnavailable, check_available

    try:
        check_available()
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    few = tmp_path / "seeds.txt"
    few.write_text("How many lines does /etc/passwd have?\nList the files in /etc that end in .conf.\n")
    config = SynthConfig(prompt="examples/bash_agent.txt", out=str(tmp_path / "run"), num_inputs=2,
                         seed_inputs=str(few), max_turns=2, max_new_tokens=96, env="sandbox", seed=1)
    synthesize(config)

    info, ds = load_run(tmp_path / "run")
    grounded = 0
    for r in ds:
        env, turns = r["meta"]["env"], r["dialogue"]
        replies = [m["content"] for m in turns[2::2]]  # the environment's turns
        assert len(env) == len(replies)
        for agent, kind, reply in zip(turns[1::2], env, replies):
            assert kind == ("sandbox" if find_command(agent["content"]) else "simulated")
            if kind == "sandbox":
                grounded += 1
                assert reply.startswith("The output of the OS:")  # the prompt's own format
    assert grounded >= 1, [r["dialogue"] for r in ds]
    assert info.counts["env_turns"]["sandbox"] == grounded
    assert info.config["env"] == "sandbox"
