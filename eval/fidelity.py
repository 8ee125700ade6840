"""Teacher fidelity: how closely a system's next-token distribution follows the prompted teacher's, on the teacher's
own replies.

A format checker says whether a reply has the prompt's form; it cannot tell a working adapter from a constant
reply. Teacher forcing asks a finer question with no checker and no sampling: feed the prompted model's greedy
reply to the held-out input, token by token, to the teacher (with the prompt) and to each system (in its own
context), and compare what the two would write next at every position. Per reply (then averaged over replies, so
the recovery ratio bootstraps over the same items as every other metric):

* ``teacher_kl``: mean over the reply's tokens of KL(teacher || system), in nats: 0 for the teacher itself; the
  distillation objective of context distillation (Snell et al. 2022) measured on held-out inputs;
* ``token_agreement``: the share of the reply's tokens that are the system's own top-1 choice;
* ``teacher_nll``: mean negative log-likelihood of the reply's tokens under the system (for the prompted row, the
  teacher's NLL of its own reply).

Forcing the prefix makes most tokens easy (the bare model already agrees on more than half of them), so read the
recovery ratio, ``(S - S_unprompted) / (S_prompted - S_unprompted)``, not the raw agreement; for ``teacher_kl`` it is
the share of the unprompted model's KL that the system removes.
"""

from __future__ import annotations

FORCED = ("teacher_kl", "token_agreement", "teacher_nll")
LOWER_IS_BETTER = {"teacher_kl", "teacher_nll"}


def teacher_forced(gen, systems: list, prompt, conversations: list[list[dict]], replies: list, on_item=None) -> dict:
    """``{system name: {metric: [score per reply]}}`` for every system that runs a model, the prompted one first.

    Args:
        gen: the evaluation's :class:`genpi.eval.generation.Generator`.
        systems: the systems; the first is the prompted teacher.
        prompt: the prompt evaluated.
        conversations: one conversation per held-out input (first turn: the bare input).
        replies: the teacher's :class:`Generation` for each conversation.
        on_item: called after each conversation (for a progress bar).
    """
    import torch

    models = [s for s in systems if not s.model_free]
    teacher = models[0]
    heads = {s.name: gen.prefix_cache(s, prompt) for s in models}
    out: dict = {s.name: {m: [] for m in FORCED} for s in models}
    for conv, reply in zip(conversations, replies):
        ids = gen.reply_ids(reply)
        if not ids:
            for s in models:  # nothing to force (an empty reply cut off): the same score for every system
                out[s.name]["teacher_kl"].append(0.0)
                out[s.name]["token_agreement"].append(1.0)
                out[s.name]["teacher_nll"].append(0.0)
            continue
        target = torch.tensor(ids)
        t = gen.reply_logprobs(teacher, prompt, conv, ids, heads[teacher.name])
        p = t.exp()
        for s in models:
            lp = t if s is teacher else gen.reply_logprobs(s, prompt, conv, ids, heads[s.name])
            out[s.name]["teacher_kl"].append(float((p * (t - lp)).sum(-1).clamp_min(0).mean()))
            out[s.name]["token_agreement"].append(float((lp.argmax(-1) == target).float().mean()))
            out[s.name]["teacher_nll"].append(float(-lp.gather(1, target[:, None]).mean()))
        if on_item:
            on_item()
    return out
