"""End to end on the real tiny model: evaluate() with PEFT-made adapters writes a complete report."""

import json
from pathlib import Path

import pytest

from genpi.config import EvalConfig
from genpi.prompt import load_prompt
from eval_fixtures import make_adapter, write_run

pytestmark = pytest.mark.integration

# A short prompt with the bash example's protocol: the long example (~800 tokens) made this module take minutes on a
# shared CPU, almost all of it the prompted system's prefill; the benchmark covers the long prompt.
SHORT_BASH_PROMPT = """You are ShellPilot. Every reply is exactly:
Think: <one sentence>
Act: bash, then the command in a ```bash block; or Act: answer(<the answer>); or Act: finish.

<USER>: How many .log files are in /var/log?
<AGENT>: Think: I count the .log files.
Act: bash
```bash
find /var/log -name "*.log" | wc -l
```
<USER>: The output of the OS:
12
<AGENT>: Think: The command counted 12 files.
Act: answer(12)
<USER>: Now, my problem is:
"""

BASH_CHECKS = f"{Path(__file__).resolve().parent.parent / 'examples' / 'bash_agent.checks.py'}:protocol"
QUALITY = ("rouge_l", "exact_match", "protocol", "multiturn_rouge_l", "multiturn_exact_match", "multiturn_protocol")
COST = ("input_tokens", "output_tokens", "flops_per_request")
FORCED = ("teacher_kl", "token_agreement", "teacher_nll")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a machine shared with other jobs, two spinning threads on two cores ran generation up
    to ten times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from genpi.models import load_model

    root = tmp_path_factory.mktemp("eval")
    (root / "prompt.txt").write_text(SHORT_BASH_PROMPT)
    prompt = load_prompt(root / "prompt.txt")
    train = write_run(root / "train", prompt.hash, ["List the files in /etc.", "Count the users in /etc/passwd."])
    held = write_run(root / "held", prompt.hash, ["How many .txt files are in /srv/docs?", "Which process uses port 8080?"])
    base = load_model("default")
    adapter = make_adapter(root / "bash", base, prompt_hash=prompt.hash, source_run=str(train), seed=0,
                           extra={"train_tokens": 40_000})
    baseline = make_adapter(root / "seqkd", base, strategy="seqkd", prompt_hash=prompt.hash, source_run=str(train), seed=1)
    return {"root": root, "prompt": prompt, "held": held, "adapter": adapter, "baseline": baseline, "base": base}


@pytest.fixture(scope="module")
def report(setup):
    from genpi.eval.evaluate import evaluate, read_report

    config = EvalConfig(prompt=str(setup["root"] / "prompt.txt"), inputs=str(setup["held"]), adapter=[str(setup["adapter"])],
                        baseline=[str(setup["baseline"])], out=str(setup["root"] / "report"), checker=BASH_CHECKS,
                        max_new_tokens=12, batch_size=2, multiturn_turns=2, reconstruction_inputs=1,
                        reconstruction_max_new_tokens=12, latency_inputs=1, bootstrap=200)
    returned = read_report(evaluate(config))  # the output directory
    on_disk = json.loads((setup["root"] / "report" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(returned))
    return on_disk


def test_report_has_every_system_and_metric(setup, report):
    assert list(report["systems"])[:4] == ["prompted", "unprompted", "genpi:bash", "seqkd"]
    assert {s["kind"] for s in list(report["systems"].values())[4:]} == {"constant"}
    for name, system in report["systems"].items():
        if system["kind"] == "constant":
            continue
        for metric in QUALITY + COST + FORCED:
            assert system["metrics"][metric] is not None, (name, metric)
        assert ("prompt_reconstruction" in system["metrics"]) == (name != "prompted")
    assert report["systems"]["seqkd"]["kind"] == "baseline"
    for name, system in report["systems"].items():  # every failed check is counted under its reason
        failed = round((1 - system["metrics"]["protocol"]) * report["inputs"]["n"])
        assert sum(system["failures"].get("protocol", {}).values()) == failed, name
    assert report["references"]["protocol, multiturn_protocol"].endswith(BASH_CHECKS)
    assert report["systems"]["prompted"]["metrics"]["rouge_l"] == 1.0  # the single-turn reference
    assert report["inputs"]["n"] == 2 and report["inputs"]["multiturn_turns"] == 2
    assert report["inputs"]["overlap_checked_against"] == [str(setup["root"] / "train")]
    for name in ("genpi:bash", "seqkd"):
        assert set(report["recovery"][name]) == set(QUALITY + FORCED)
        for r in report["recovery"][name].values():
            assert (r["ratio"] is None) == (not r["defined"])
    assert report["commands"] and report["versions"]["torch"]


def test_teacher_forcing_and_the_constant_baseline(setup, report):
    systems = report["systems"]
    teacher = systems["prompted"]["metrics"]
    assert teacher["teacher_kl"] == 0.0 and teacher["token_agreement"] == 1.0  # its own greedy reply
    for name in ("unprompted", "genpi:bash", "seqkd"):
        m = systems[name]["metrics"]
        assert m["teacher_kl"] > 0.1 and m["token_agreement"] < 1.0 and m["teacher_nll"] > teacher["teacher_nll"]
    constant = systems["constant"]
    # the teacher's most frequent reply on the training run, the same to every input, with no model cost
    assert constant["reply"].startswith("Think: step 0 for") and "teacher_kl" not in constant["metrics"]
    assert constant["metrics"]["protocol"] == 1.0 and "input_tokens" not in constant["metrics"]
    assert report["reference_rows"]["format_only"] == ["constant"]
    assert report["reference_rows"]["training_targets_protocol"] == {"pass": 4, "n": 4}
    rows = [json.loads(line) for line in (setup["root"] / "report" / "outputs.jsonl").read_text().splitlines()]
    single = [r for r in rows if r["part"] == "single"]
    assert all(r["replies"]["constant"]["text"] == constant["reply"] for r in single)
    assert all(r["replies"]["prompted"]["teacher_kl"] == 0.0 for r in single)


def test_cost_is_measured(report):
    cost = report["cost"]
    prompted, adapter = report["systems"]["prompted"]["metrics"], report["systems"]["genpi:bash"]["metrics"]
    # the prompt adds its own tokens to every request (the chat template differs a little around it)
    assert prompted["input_tokens"] - adapter["input_tokens"] > 0.9 * cost["prompt_tokens"]
    assert cost["input_token_ratio"] > 2
    latency = cost["latency"]
    assert latency["pairs"] == 1 and latency["prompted"]["prefill_s"] > 0 and latency["genpi:bash"]["e2e_s"] > 0
    assert latency["prompted"]["input_tokens"] > latency["genpi:bash"]["input_tokens"]
    assert cost["break_even"]["genpi:bash"]["requests"] > 0
    assert cost["break_even"]["seqkd"]["requests"] is None  # its genpi.json records no train_tokens
    # prompt caching: the same request, its prompt's KV computed once and reused
    cached, kv = latency["prompted (cached prefix)"], cost["kv"]
    assert cached["input_tokens"] == latency["prompted"]["input_tokens"] and cached["prefill_s"] > 0
    assert 0.9 * cost["prompt_tokens"] < latency["prefix_tokens"] < latency["prompted"]["input_tokens"]
    assert kv["bytes_per_token"] == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64, float32
    assert kv["prompted (cached prefix)"]["shared_mb"] > 0
    assert kv["prompted (cached prefix)"]["per_request_mb"] < kv["prompted"]["per_request_mb"]
    assert kv["prompted (cached prefix)"]["attended_tokens"] == kv["prompted"]["attended_tokens"]  # still read
    assert kv["genpi:bash"]["attended_tokens"] < kv["prompted"]["attended_tokens"]
    merged = latency["genpi:bash (merged)"]  # as `genpi export --merge` serves it
    assert merged["input_tokens"] == latency["genpi:bash"]["input_tokens"] and merged["prefill_s"] > 0
    assert latency["seqkd"]["prefill_s"] > 0 and "seqkd (merged)" not in latency  # every adapter, as it runs here


def test_a_cached_prefix_changes_the_time_not_the_reply(setup):
    from genpi.eval.generation import Generator
    from genpi.eval.systems import System

    prompted = System("prompted", "prompted")
    gen = Generator("default", [prompted])
    prefix = gen.prefix_cache(prompted, setup["prompt"])
    for text in ("How many .txt files are in /srv/docs?", "Which user owns /etc/hosts?"):
        conversation = [{"role": "user", "content": text}]
        plain = gen.time_request(prompted, setup["prompt"], conversation, 12)
        reused = gen.time_request(prompted, setup["prompt"], conversation, 12, prefix=prefix)
        assert reused["text"] == plain["text"] and reused["input_tokens"] == plain["input_tokens"]


def test_a_merged_adapter_changes_the_time_not_the_reply(setup):
    from genpi.eval.generation import Generator
    from genpi.eval.systems import adapter_system

    adapter = adapter_system(setup["adapter"], "adapter")
    gen = Generator("default", [adapter])
    for text in ("How many .txt files are in /srv/docs?", "Which user owns /etc/hosts?"):
        conversation = [{"role": "user", "content": text}]
        unmerged = gen.time_request(adapter, setup["prompt"], conversation, 12)
        merged = gen.time_request(adapter, setup["prompt"], conversation, 12, merged=True)
        assert merged["text"] == unmerged["text"]
    assert gen.merged(adapter) is gen.merged(adapter)  # made once


def test_outputs_and_chart_are_written(setup, report):
    out = setup["root"] / "report"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert [r["part"] for r in rows] == ["single", "single", "multiturn", "multiturn", "reconstruction"]
    single = rows[:2]
    for row in single:
        assert row["replies"]["prompted"]["text"] == row["reference"]
    # the adapters are really switched on: their replies are not the bare model's
    assert any(r["replies"]["genpi:bash"]["text"] != r["replies"]["unprompted"]["text"] for r in single)
    assert any(r["replies"]["genpi:bash"]["text"] != r["replies"]["seqkd"]["text"] for r in single)


def test_base_systems_run_the_unchanged_base_model(setup):
    """One loaded model serves every system: disabled adapters give the base model's logits exactly."""
    import torch

    from genpi.eval.generation import Generator
    from genpi.eval.systems import build_systems

    systems, _ = build_systems(setup["prompt"], [str(setup["adapter"])], [str(setup["baseline"])])
    gen = Generator("default", systems)
    ids = gen.tokenizer("Count the users.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = setup["base"](ids).logits
        logits = {}
        for s in systems[1:]:
            with gen.active(s):
                logits[s.name] = gen.model(ids).logits
    assert torch.equal(logits["unprompted"], expected)
    assert not torch.allclose(logits["genpi:bash"], expected, atol=1e-3)
    assert not torch.allclose(logits["genpi:bash"], logits["seqkd"], atol=1e-3)
    assert gen.adapter_params(systems[2]) > 0 and gen.adapter_params(systems[1]) == 0


def test_a_broken_adapter_is_a_user_error(setup, tmp_path):
    import shutil

    from genpi.errors import UserError
    from genpi.eval.generation import Generator
    from genpi.eval.systems import adapter_system

    broken = tmp_path / "broken"
    shutil.copytree(setup["adapter"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(UserError, match=r"cannot load adapter .*broken"):
        Generator("default", [adapter_system(broken, "adapter")])


def test_tasks_are_worked_in_sandboxes_and_scored_for_every_system(setup):
    from genpi.eval.evaluate import evaluate, read_report
    from genpi.sandbox import SandboxUnavailable, check_available

    try:
        check_available()
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    tasks = setup["root"] / "tasks.jsonl"
    lines = (Path(__file__).resolve().parent.parent / "examples" / "bash_tasks.jsonl").read_text().splitlines()
    tasks.write_text("\n".join(lines[:3]) + "\n")
    config = EvalConfig(prompt=str(setup["root"] / "prompt.txt"), tasks=str(tasks), adapter=[str(setup["adapter"])],
                        out=str(setup["root"] / "tasks-report"), max_new_tokens=40, batch_size=4, task_turns=2,
                        multiturn_turns=0, reconstruction_inputs=0, latency_inputs=0, bootstrap=200,
                        overlap_check=False, compressed=[0.5])
    report = read_report(evaluate(config))
    compressed = report["systems"]["compressed 0.5"]  # a baseline without training, on the tasks too
    assert compressed["kind"] == "compressed" and abs(compressed["compression"]["achieved_rate"] - 0.5) < 0.05
    assert compressed["metrics"]["input_tokens"] < report["systems"]["prompted"]["metrics"]["input_tokens"]
    assert "compressed 0.5" in report["recovery"]
    assert report["inputs"]["kind"] == "tasks" and report["inputs"]["n"] == 3  # the requests, answered single-turn
    assert report["tasks"]["n"] == 3 and report["tasks"]["backend"] in ("bwrap", "unshare")
    assert set(report["tasks"]["success_ci"]) == set(report["systems"])  # each system's rate, with its interval
    for name, system in report["systems"].items():
        assert 0 <= system["metrics"]["task_success"] <= 1, name
        failed = round((1 - system["metrics"]["task_success"]) * 3)
        assert sum(system["failures"].get("task_success", {}).values()) == failed
    assert "task_success" in next(iter(report["recovery"].values()))
    # first commands run in fresh sandboxes, for every system (scored on the tasks where the teacher runs one)
    assert all("execution_agreement" in s["metrics"] for s in report["systems"].values())
    assert "execution_agreement" in report["references"]
    rows = [json.loads(l) for l in (setup["root"] / "tasks-report" / "outputs.jsonl").read_text().splitlines()]
    worked = [r for r in rows if r["part"] == "task"]
    assert len(worked) == 3 and all(set(r["results"]) == set(report["systems"]) for r in worked)
    prompted = [r["results"]["prompted"] for r in worked]
    assert all(o["turns"] and o["turns"][0]["role"] == "assistant" for o in prompted)
