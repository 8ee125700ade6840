"""Inference cost: tokens per request, measured latency, estimated FLOPs and the break-even point of training.

FLOPs are the usual dense-transformer estimate: ``2 * params * tokens`` per forward token (prefill and decode
alike) and ``6 * params * tokens`` per training token (forward and backward). Attention's own term, which grows
with the context length, is left out, so the estimate understates what a long prompt costs. For LoRA the
training figure is an upper bound: frozen weights need no weight gradients (about ``4 * params`` per token).
"""

from __future__ import annotations

import statistics

from genpi.eval.systems import System


def flops_per_request(params: int, input_tokens: float, output_tokens: float) -> float:
    """Forward FLOPs of one request: every prompt token once (prefill), every generated token once (decode)."""
    return 2.0 * params * (input_tokens + output_tokens)


def training_flops(params: int, train_tokens: int, teacher_tokens: int = 0) -> float:
    return 6.0 * params * train_tokens + 2.0 * params * teacher_tokens


def break_even(train_flops: float | None, saving_per_request: float) -> float | None:
    """Requests after which the training compute is paid back; None when unknown or when nothing is saved."""
    if train_flops is None or saving_per_request <= 0:
        return None
    return train_flops / saving_per_request


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


CACHED = "prompted (cached prefix)"


def measure_latency(generator, prompt, first: System, second: System, conversations: list[list[dict]],
                    max_new_tokens: int, on_request=None, warmup: bool = True, fixed_length: bool = False,
                    serving: bool = False, also: list[System] = ()) -> dict:
    """Time each conversation as a lone request on both systems, rotating which goes first; with ``serving``, also
    as a server would run them: ``first`` with its prefix computed once and reused (the arm ``CACHED``) and an
    adapter ``second`` merged into a copy of the base (the arm ``merged_name(second.name)``), as
    `genpi export --merge` serves it. Systems in ``also`` (other adapters) are timed as arms of their own; a soft
    prompt's virtual tokens are reused as a cached prefix is (their KV is computed once by construction).

    Rotation (first/second, then second/first, ...) spreads slow drifts of a shared machine (other processes,
    thermal throttling, caches) evenly over the arms. With ``warmup``, one untimed short request per arm comes
    first (not needed when the systems have just generated). With ``fixed_length`` every request decodes exactly
    ``max_new_tokens`` tokens, so the comparison isolates what the context costs.

    Returns ``{arm: {"prefill_s", "e2e_s", "input_tokens", "output_tokens", "decode_per_token_s"} (medians),
    "pairs": n, ...}``; ``prefill_s`` is the time to the first token; with ``serving``, ``"prefix_tokens"`` too.
    """
    if not conversations:
        return {}
    arms = [(first.name, first, None, False), (second.name, second, None, False)]
    if serving:
        prefix = generator.prefix_cache(first, prompt)
        arms.append((CACHED, first, prefix, False))
        if second.adapter and not second.soft:
            arms.append((merged_name(second.name), second, None, True))
    arms += [(s.name, s, None, False) for s in also if s.name not in (first.name, second.name)]
    for _, s, pre, merged in arms if warmup or serving else ():  # a cached prefix and a merged copy are new
        generator.time_request(s, prompt, conversations[0], max_new_tokens=2, prefix=pre, merged=merged)
    timings = {name: [] for name, *_ in arms}
    for i, conversation in enumerate(conversations):
        for name, s, pre, merged in arms[i % len(arms):] + arms[: i % len(arms)]:
            timings[name].append(generator.time_request(s, prompt, conversation, max_new_tokens, fixed_length,
                                                        prefix=pre, merged=merged))
            if on_request:
                on_request()
    out = {"pairs": len(conversations), "order": "rotating", "max_new_tokens": max_new_tokens,
           "fixed_length": fixed_length}
    if serving:
        out["prefix_tokens"] = len(prefix[0])
    for name, rows in timings.items():
        out[name] = {k: statistics.median(r[k] for r in rows) for k in ("prefill_s", "e2e_s", "input_tokens", "output_tokens")}
        out[name]["decode_per_token_s"] = statistics.median(
            (r["e2e_s"] - r["prefill_s"]) / max(1, r["output_tokens"] - 1) for r in rows)
    return out


def merged_name(name: str) -> str:
    return f"{name} (merged)"


def latency_arms(second: System, also: list[System] = ()) -> int:
    """How many arms :func:`measure_latency` times with ``serving`` (for a progress bar)."""
    return 3 + bool(second.adapter and not second.soft) + sum(s.name != second.name for s in also)


def kv_memory(bytes_per_token: int, input_tokens: float, output_tokens: float, shared_tokens: int = 0) -> dict:
    """KV cache of one request in MB: what each concurrent request holds alone, and what all of them share (a
    cached prefix, held once). Attention reads both at every decoded token."""
    mb = 1024 * 1024
    return {"per_request_mb": (input_tokens - shared_tokens + output_tokens) * bytes_per_token / mb,
            "shared_mb": shared_tokens * bytes_per_token / mb,
            "attended_tokens": input_tokens + output_tokens}
