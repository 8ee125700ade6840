"""The compression baseline on the real tiny model: the share asked for is what is kept, structure survives, and
what the model can predict goes first."""

from __future__ import annotations

import pytest

from genpi.config import EvalConfig
from genpi.errors import UserError
from genpi.prompt import AgentPrompt

TRANSCRIPT = AgentPrompt(messages=(
    {"role": "system", "content": "You are TicketBot. Reply with one JSON object: category, priority, summary."},
    {"role": "user", "content": "My invoice INV-88213 was charged twice this month."},
    {"role": "assistant", "content": '{"category": "billing", "priority": "high", "summary": "double charge"}'},
), kind="chat", input_prefix="Ticket:")


@pytest.fixture(scope="module")
def lm(smol_path):
    from genpi.models import load_model, load_tokenizer

    return load_model("default").eval(), load_tokenizer("default")


@pytest.mark.integration
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.8])
def test_the_share_asked_for_is_kept_and_the_structure_survives(lm, rate):
    from genpi.eval.compression import compress

    model, tok = lm
    c = compress(TRANSCRIPT, model, tok, rate, segment=16)
    assert abs(c.achieved - rate) < 0.06 and c.kept == round(c.achieved * c.tokens)
    assert [m["role"] for m in c.prompt.messages] == ["system", "user", "assistant"]
    assert c.prompt.input_prefix == "Ticket:"  # the lead-in of every input is not the prompt's to prune
    for before, after in zip(TRANSCRIPT.messages, c.prompt.messages):
        assert 0 < len(after["content"]) < len(before["content"])
        assert _subsequence("".join(after["content"].split()), "".join(before["content"].split()))  # nothing new
    assert compress(TRANSCRIPT, model, tok, rate, segment=16) == c  # deterministic


@pytest.mark.integration
def test_what_the_model_can_predict_is_dropped_first(lm):
    from genpi.eval.compression import compress

    model, tok = lm
    repeated = "Always answer in English. " * 8
    prompt = AgentPrompt(messages=({"role": "system", "content": repeated + "The vault code is QX7-ZP94."},), kind="text")
    c = compress(prompt, model, tok, 0.3, segment=128)
    text = c.prompt.messages[0]["content"]
    code = text[text.index("code"):] if "code" in text else ""
    assert sum(ch.isdigit() or ch.isupper() for ch in code) >= 2  # the code cannot be guessed: parts of it kept
    assert text.count("English") <= 2  # a sentence seen before can be: its copies go


def _subsequence(small: str, big: str) -> bool:
    rest = iter(big)
    return all(ch in rest for ch in small)


def test_rates_are_checked_when_the_config_is_made():
    assert EvalConfig(compressed=["0.5", 0.3]).compressed == [0.5, 0.3]
    with pytest.raises(UserError, match="--compressed 1.0 is not between 0 and 1"):
        EvalConfig(compressed=[1.0])
    with pytest.raises(UserError, match="--compressed .*give shares"):
        EvalConfig(compressed=["half"])
