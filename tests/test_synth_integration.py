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
                         seed_inputs=seeds, max_turns=2, max_tokens=48, concurrency=8, seed=1)
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
    # the server was stopped: no process is left serving the model
    left = subprocess.run(["pgrep", "-f", "serve " + smol_path], capture_output=True, text=True).stdout
    assert not left.strip()
