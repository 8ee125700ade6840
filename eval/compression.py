"""A compression baseline: the prompt pruned by token surprisal under a local causal LM, with no training.

The method of LLMLingua (Jiang et al., EMNLP 2023), reimplemented on transformers: a token the model predicts
well from what precedes it carries little information, so dropping it costs the reader little. Each message of
the prompt is cut into segments of ``segment`` tokens; each segment is scored token by token, conditioned on the
prompt *as compressed so far* (the paper's iterative token-level compression, so that a token kept early changes
what later tokens are worth), and its most surprising tokens are kept up to the target share; the segment's
kept tokens join the conditioning text. Roles, the order of messages and of tokens, and the input lead-in are
kept; only the messages' text shrinks. ``rate`` is the share of the prompt's tokens kept (0.5 keeps half), and
the achieved share is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from genpi.prompt import AgentPrompt


@dataclass(frozen=True)
class Compressed:
    prompt: AgentPrompt  # the same prompt with each message's text pruned
    target: float  # share of tokens asked to be kept
    achieved: float  # share of the messages' tokens kept
    tokens: int  # tokens of the messages before
    kept: int  # and after


def compress(prompt: AgentPrompt, model, tokenizer, rate: float, segment: int = 64) -> Compressed:
    """``prompt`` with every message's text pruned to about ``rate`` of its tokens by surprisal under ``model``."""
    import torch

    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], not {rate}")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    context: list[int] = [bos] if bos is not None else []
    messages, total, kept_total = [], 0, 0
    device = next(model.parameters()).device
    for message in prompt.messages:
        ids = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
        kept: list[int] = []
        for start in range(0, len(ids), segment):
            chunk = ids[start : start + segment]
            seq = torch.tensor([context + chunk], device=device)
            with torch.inference_mode():
                logits = model(input_ids=seq).logits[0, len(context) - 1 : -1].float()
            surprisal = -torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(chunk, device=device)[:, None])[:, 0]
            keep = max(1, round(rate * len(chunk)))
            chosen = sorted(torch.topk(surprisal, keep).indices.tolist())
            kept += [chunk[i] for i in chosen]
            context += [chunk[i] for i in chosen]
        total += len(ids)
        kept_total += len(kept)
        messages.append({"role": message["role"], "content": tokenizer.decode(kept).strip()})
    pruned = AgentPrompt(messages=tuple(messages), kind=prompt.kind, source=f"{prompt.source} (compressed to {rate})",
                         input_prefix=prompt.input_prefix)
    return Compressed(pruned, rate, kept_total / total if total else 1.0, total, kept_total)
