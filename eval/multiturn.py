"""Multi-turn fidelity: replay held-out dialogues with the teacher's history and score each next agent turn.

Every system gets the same history, the teacher's own recorded turns up to (not including) an agent turn, and
its reply is compared with what the teacher said there. The history never contains a system's own earlier
replies, so one early mistake does not decide every later score.
"""

from __future__ import annotations

from dataclasses import dataclass

from genpi.eval.heldout import HeldOut


@dataclass
class Turn:
    """One replayed agent turn: the conversation before it (first turn: the bare input) and the teacher's reply."""

    id: str
    turn: int  # 1 for the first agent turn of the dialogue
    conversation: list[dict]
    reference: str


def replay_turns(held: HeldOut, limit: int) -> list[Turn]:
    """The agent turns of the held-out dialogues, whole dialogues in order, at most ``limit`` turns.

    Dialogues whose synthesis failed and empty agent turns are left out: they are no reference.
    """
    turns: list[Turn] = []
    for item in held.items:
        if not item.dialogue or item.finish == "error":
            continue
        history = [{"role": "user", "content": item.input}]  # bare input: each system adds its own context
        agent_turn = 0
        for message in item.dialogue[1:]:
            if message["role"] == "assistant":
                agent_turn += 1
                if message["content"].strip():
                    if len(turns) >= limit:
                        return turns
                    turns.append(Turn(item.id, agent_turn, [dict(m) for m in history], message["content"]))
            history.append({"role": message["role"], "content": message["content"]})
    return turns
