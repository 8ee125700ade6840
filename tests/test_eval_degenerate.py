"""The behaviour metrics can fail: an adapter really trained to give one constant reply passes the format checker
and still scores low on teacher fidelity and action agreement (the real tiny model, real TRL steps)."""

import json

import pytest

from genpi.config import EvalConfig, TrainConfig
from genpi.prompt import parse_prompt
from test_eval_integration import BASH_CHECKS, SHORT_BASH_PROMPT

pytestmark = pytest.mark.integration

CONSTANT = "Think: I am done.\nAct: finish"
TRAIN_INPUTS = ["List the files in /etc.", "Count the users in /etc/passwd.", "Show the free disk space.",
                "Which kernel is running?", "Print the current directory.", "How many CPUs does this machine have?"]
HELD = ["How many .txt files are in /srv/docs?", "Which process uses port 8080?", "Show the last 5 lines of /var/log/syslog.",
        "Create a directory named backup in /tmp.", "What is the size of /usr/bin?", "Find files larger than 10 MB in /home."]


def constant_run(root, prompt):
    """A synthesis run whose teacher turns are all the same reply."""
    run = root / "train"
    run.mkdir()
    info = {"genpi_version": "test", "prompt_path": str(root / "prompt.txt"), "prompt_hash": prompt.hash,
            "prompt": {"kind": prompt.kind, "messages": list(prompt.messages), "input_prefix": prompt.input_prefix},
            "config": {"model": "default"}}
    (run / "run.json").write_text(json.dumps(info))
    with open(run / "records.jsonl", "w") as f:
        for i, text in enumerate(TRAIN_INPUTS):
            f.write(json.dumps({"id": f"c{i}", "index": i, "input": text, "as_is": "Sure.", "to_be": CONSTANT,
                                "reason": "-", "dialogue": [{"role": "user", "content": text},
                                                            {"role": "assistant", "content": CONSTANT}],
                                "finish": "end", "meta": {}}) + "\n")
    return run


def test_an_adapter_trained_to_one_reply_passes_the_format_and_fails_the_behaviour(tmp_path):
    from genpi.eval.evaluate import evaluate, read_report
    from genpi.training.run import train

    (tmp_path / "prompt.txt").write_text(SHORT_BASH_PROMPT)
    prompt = parse_prompt(SHORT_BASH_PROMPT, source=str(tmp_path / "prompt.txt"))
    run = constant_run(tmp_path, prompt)
    adapter = train(TrainConfig(data=str(run), out=str(tmp_path / "constant"), strategy="seqkd", max_steps=8,
                                batch_size=3, learning_rate=3e-3, lora_dropout=0.0, save_steps=100))
    (tmp_path / "held.txt").write_text("\n".join(HELD) + "\n")
    report = read_report(evaluate(EvalConfig(
        prompt=str(tmp_path / "prompt.txt"), inputs=str(tmp_path / "held.txt"), adapter=[str(adapter)],
        checker=BASH_CHECKS, out=str(tmp_path / "report"), max_new_tokens=48, multiturn_turns=0,
        reconstruction_inputs=0, latency_inputs=0, bootstrap=200)))
    learned = report["systems"]["seqkd:constant"]["metrics"]
    prompted = report["systems"]["prompted"]["metrics"]
    assert learned["protocol"] >= 5 / 6  # it learned the reply: the format checker is satisfied
    assert "constant" in report["reference_rows"]["format_only"]  # and the report says the checker cannot judge
    # what the teacher does, it does not: it never takes the teacher's action, nor writes the teacher's tokens
    assert prompted["action"] == 1.0 and learned["action"] <= 1 / 6
    assert learned["token_agreement"] < prompted["token_agreement"] - 0.3
    assert learned["teacher_kl"] > 0.5
