"""How often a training run's environment replies are what really happens: the dialogues' commands replayed.

    python benchmarks/environment_fidelity.py runs/tasks/train-simulated runs/tasks/train-sandbox

For each synthesis run, every dialogue's commands (each agent turn's first fenced bash block, in order) are run in a
fresh sandbox of the dialogue's own, and each reply the dialogue recorded is compared with the reply the sandbox
gives, formatted the same way (the prompt's environment opener, output cut at 800 characters). A run made with
``--env sandbox`` is the control: its replies should match their replay, except for commands whose output changes
from run to run (dates, timings). A run with the simulated environment shows how often the model playing the
operating system wrote what the command would really print.
"""

from __future__ import annotations

import argparse

from rich.table import Table

from genpi.environment import find_command, reply_text
from genpi.progress import make_console
from genpi.sandbox import Sandbox
from genpi.synth.episodes import environment_opener
from genpi.synth.store import load_run


def replay(run: str, chars: int) -> dict:
    """Counts of the run's environment replies: compared, equal to the replay, and examples of those that differ."""
    info, records = load_run(run)
    from genpi.prompt import AgentPrompt

    opener = environment_opener(AgentPrompt.from_dict(info.prompt))
    out = {"dialogues": 0, "replies": 0, "no_command": 0, "equal": 0, "examples": []}
    for rec in records:
        turns = rec["dialogue"]
        pairs = [(turns[k]["content"], turns[k + 1]["content"]) for k in range(1, len(turns) - 1, 2)
                 if turns[k]["role"] == "assistant" and turns[k + 1]["role"] == "user"]
        if not pairs:
            continue
        out["dialogues"] += 1
        with Sandbox() as box:
            for agent, recorded in pairs:
                command = find_command(agent)
                if command is None:
                    out["no_command"] += 1
                    continue
                real = reply_text(box.run(command), opener, chars)
                out["replies"] += 1
                if real.strip() == recorded.strip():
                    out["equal"] += 1
                elif len(out["examples"]) < 3:
                    out["examples"].append((command, recorded, real))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="synthesis run directories")
    ap.add_argument("--env-output-chars", type=int, default=800)
    args = ap.parse_args()
    console = make_console()
    table = Table(title="environment replies of training dialogues against their commands replayed in a sandbox")
    for col in ("run", "environment", "dialogues", "replies to a command", "equal to the replay", "share"):
        table.add_column(col, justify="left" if col in ("run", "environment") else "right")
    for run in args.runs:
        counts = replay(run, args.env_output_chars)
        env = load_run(run)[0].config.get("env", "simulated")
        share = counts["equal"] / counts["replies"] if counts["replies"] else float("nan")
        table.add_row(run, env, str(counts["dialogues"]), str(counts["replies"]), str(counts["equal"]), f"{share:.2f}")
        for command, recorded, real in counts["examples"]:
            console.print(f"{run}: `{command}`\n  recorded: {recorded!r}\n  replayed: {real!r}", highlight=False,
                          markup=False)
    console.print(table)


if __name__ == "__main__":
    main()
