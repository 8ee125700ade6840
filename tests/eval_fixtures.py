"""Small on-disk fixtures for the evaluation tests: synthesis run directories and PEFT adapters made by hand."""

from __future__ import annotations

import json
from pathlib import Path

BASH_PROMPT = Path(__file__).resolve().parent.parent / "examples" / "bash_agent.txt"


def write_run(run_dir: Path, prompt_hash: str, inputs: list[str], turns: int = 2) -> Path:
    """A synthesis run directory in the store's format: run.json and one record per input, with a dialogue."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"genpi_version": "test", "prompt_hash": prompt_hash}))
    with open(run_dir / "records.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(inputs):
            dialogue = [{"role": "user", "content": text}]
            for k in range(turns):
                dialogue.append({"role": "assistant", "content": f"Think: step {k} for {text}\nAct: bash\n```bash\nls /tmp\n```"})
                if k < turns - 1:
                    dialogue.append({"role": "user", "content": "The output of the OS:\nfile.txt"})
            record = {"id": f"r{i}", "index": i, "input": text, "as_is": f"I would try to {text.lower()}",
                      "to_be": dialogue[1]["content"], "reason": "The prompt demands the Think/Act protocol.",
                      "dialogue": dialogue, "finish": "max_turns", "meta": {}}
            f.write(json.dumps(record) + "\n")
    return run_dir


def make_adapter(out: Path, model, *, strategy: str = "genpi", prompt_hash: str = "", source_run: str = "",
                 seed: int = 0, std: float = 0.1, extra: dict | None = None) -> Path:
    """A LoRA adapter on ``model`` whose B weights are perturbed (so it differs from the base), with genpi.json."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    from genpi.models import quiet_peft

    with quiet_peft():
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)  # large enough to change greedy replies (0.02 does not)
    peft_model.save_pretrained(out)
    peft_model.unload()  # give the base model back unchanged for the next adapter
    info = {"strategy": strategy, "base_model": "default", "prompt_hash": prompt_hash, "student_context": [],
            "source_run": source_run, **(extra or {})}
    (out / "genpi.json").write_text(json.dumps(info))
    return out
