"""The quick start recipe at its CI size: synth -> train -> eval on the real tiny model, through `genpi run`."""

import json

import pytest

from genpi.cli import main

pytestmark = pytest.mark.integration

QUALITY = ("rouge_l", "exact_match", "bash_protocol", "multiturn_rouge_l", "prompt_reconstruction")


def test_quickstart_smoke_report_has_every_system_and_metric(tmp_path, smol_path):
    out = tmp_path / "qs"
    assert main(["run", "recipes/quickstart.py", "--smoke", "--out", str(out)]) == 0

    report = json.loads((out / "report" / "report.json").read_text())
    systems = report["systems"]
    kinds = sorted(s["kind"] for s in systems.values())
    assert "prompted" in systems and "unprompted" in systems
    assert len(systems) == 4, kinds  # prompted, unprompted, the genpi adapter, the seqkd baseline
    strategies = {s.get("strategy") for s in systems.values()}
    assert {"genpi", "seqkd"} <= strategies
    for name, s in systems.items():
        for metric in QUALITY:
            if name == "prompted" and metric == "prompt_reconstruction":
                continue  # the prompted system has the prompt in context: it is not asked to write it back
            assert metric in s["metrics"], (name, metric)
    assert report["recovery"] and report["cost"]
    assert (out / "report" / "report.png").stat().st_size > 10_000
    for strategy in ("genpi", "seqkd"):
        meta = json.loads((out / "adapters" / strategy / "genpi.json").read_text())
        assert meta["strategy"] == strategy

