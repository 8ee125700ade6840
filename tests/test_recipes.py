"""The recipes at their CI size: synth -> train -> eval on the real tiny model, through `genpi run`."""

import json

import pytest

from genpi.cli import main
from genpi.config import TrainConfig

pytestmark = pytest.mark.integration

DEFAULT = TrainConfig().strategy
QUALITY = ("rouge_l", "exact_match", "protocol", "prompt_reconstruction")


def test_quickstart_smoke_report_has_every_system_and_metric(tmp_path, smol_path):
    out = tmp_path / "qs"
    assert main(["run", "recipes/quickstart.py", "--smoke", "--out", str(out)]) == 0

    report = json.loads((out / "report" / "report.json").read_text())
    systems = report["systems"]
    kinds = sorted(s["kind"] for s in systems.values())
    assert "prompted" in systems and "unprompted" in systems
    # prompted, unprompted, the default (genpi_kl) adapter, the genpi baseline; then the constant reply (no model)
    assert kinds.count("constant") >= 1 and len(systems) - kinds.count("constant") == 4, kinds
    strategies = {s.get("strategy") for s in systems.values()}
    assert {"genpi_kl", "genpi"} <= strategies
    for name, s in systems.items():
        if s["kind"] == "constant":
            assert {"protocol", "action", "rouge_l"} <= set(s["metrics"]), name
            continue
        for metric in QUALITY + ("teacher_kl", "token_agreement", "action"):
            if name == "prompted" and metric == "prompt_reconstruction":
                continue  # the prompted system has the prompt in context: it is not asked to write it back
            assert metric in s["metrics"], (name, metric)
    assert set(report["recovery"]) == {n for n, s in systems.items()
                                       if s["kind"] in ("adapter", "baseline", "constant")}
    cost = report["cost"]
    assert cost["input_token_ratio"] > 5 and cost["flops_ratio"] > 1
    assert cost["latency"]["prefill_ratio"] and cost["latency"]["e2e_ratio"]
    for name, s in systems.items():  # break-even from the tokens each adapter's training really processed
        if s["kind"] in ("adapter", "baseline"):
            assert cost["break_even"][name]["requests"] > 0, cost["break_even"][name]["note"]
    assert (out / "report" / "report.png").stat().st_size > 10_000
    for strategy in ("genpi_kl", "genpi"):
        meta = json.loads((out / "adapters" / strategy / "genpi.json").read_text())
        assert meta["strategy"] == strategy
    # The synthesis yield the summary prints, as run.json keeps it: trainable records are those with an agent turn.
    counts = json.loads((out / "train" / "run.json").read_text())["counts"]
    records = [json.loads(line) for line in (out / "train" / "records.jsonl").read_text().splitlines()]
    trainable = sum(r["finish"] != "error" and any(m["role"] == "assistant" for m in r["dialogue"]) for r in records)
    assert counts["trainable"] == trainable and counts["yield"]["trainable_share"] == trainable / 4
    assert sum(counts["finish"].values()) == len(records)
    held = json.loads((out / "heldout" / "run.json").read_text())["counts"]["yield"]
    assert held["inputs_passing_reply_screen"] <= held["inputs_screened_by_reply"]



@pytest.mark.slow  # one synthesis, eight trainings, one evaluation at the smoke size
def test_fidelity_smoke_prints_the_ablation_and_the_scaling_chart(tmp_path, smol_path):
    out = tmp_path / "fid"
    assert main(["run", "recipes/fidelity.py", "--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    adapters = [s for s in report["systems"].values() if s["kind"] == "adapter"]
    assert len(adapters) == 7  # six strategies on the ablation's records, GenPI on the other subset
    assert all("token_agreement" in s["metrics"] for s in adapters)
    assert (out / "report" / "fidelity.png").stat().st_size > 10_000


@pytest.mark.slow  # two agents end to end (about 10 minutes)
def test_proof_smoke_reports_protocol_recovery_for_both_agents(tmp_path, smol_path):
    out = tmp_path / "proof"
    assert main(["run", "recipes/proof.py", "--smoke", "--out", str(out)]) == 0
    adapter = f"{DEFAULT}:{DEFAULT}"  # genpi train's default strategy, in a directory named after it
    for agent in ("bash", "support"):
        report = json.loads((out / agent / "report" / "report.json").read_text())
        assert list(report["systems"])[:3] == ["prompted", "unprompted", adapter]
        assert {s["kind"] for s in list(report["systems"].values())[3:]} == {"constant"}  # the constant, the minimal
        assert {"protocol", "teacher_kl", "token_agreement", "action"} <= set(report["systems"][adapter]["metrics"])
        assert {"protocol", "teacher_kl", "token_agreement"} <= set(report["recovery"][adapter])


@pytest.mark.slow  # two syntheses, two trainings, a task evaluation (about 3.5 minutes)
def test_tasks_smoke_compares_simulated_and_sandboxed_dialogues_by_task_success(tmp_path, smol_path):
    out = tmp_path / "tasks"
    assert main(["run", "recipes/tasks.py", "--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    adapters = [n for n, s in report["systems"].items() if s["kind"] == "adapter"]
    assert list(report["systems"])[:2] == ["prompted", "unprompted"]
    assert adapters == [f"{DEFAULT}:genpi-simulated", f"{DEFAULT}:genpi-sandbox"]
    assert all("task_success" in s["metrics"] for s in report["systems"].values())
    grounded = json.loads((out / "train-sandbox" / "run.json").read_text())
    assert grounded["config"]["env"] == "sandbox"
    simulated = [json.loads(l)["input"] for l in (out / "train-simulated" / "records.jsonl").read_text().splitlines()]
    sandboxed = [json.loads(l)["input"] for l in (out / "train-sandbox" / "records.jsonl").read_text().splitlines()]
    assert sorted(simulated) == sorted(sandboxed)  # the same inputs: only the environment differs


@pytest.mark.slow  # one synthesis, nine trainings, one evaluation of twelve systems (about 8 minutes)
def test_compare_smoke_trains_every_strategy_and_prints_one_table(tmp_path, smol_path, capsys):
    from genpi.config import STRATEGIES

    out = tmp_path / "compare"
    assert main(["run", "recipes/compare.py", "--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    strategies = {s.get("strategy") for s in report["systems"].values()}
    assert set(STRATEGIES) <= strategies and "compressed 0.5" in report["systems"]
    soft = [n for n, s in report["systems"].items() if s["metrics"].get("virtual_tokens")]
    assert len(soft) == 2 and all(report["cost"]["latency"].get(n) for n in soft)
    assert all(report["cost"]["latency"].get(n) for n, s in report["systems"].items() if s.get("adapter"))
    printed = capsys.readouterr().out
    assert "every method, one table" in printed and "kv_prefix" in printed.split("every method, one table")[1]
