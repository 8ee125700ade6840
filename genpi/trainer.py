"""The GenPI trainer: TRL's ``SFTTrainer`` with the joint loss in ``compute_loss``.

``L = w_sft·L_behaviour + w_pg·L_prompt_generation + w_kl·L_kl``

* Behaviour and prompt-generation rows share **one** forward pass; each loss is the mean over its own supervised
  tokens, so a long prompt-generation target does not drown the behaviour loss (or the reverse).
* Logits are computed only where a label is supervised (``logits_to_keep`` with a boolean mask), never for the
  whole ``(batch, length, vocab)`` block.
* The KL term compares the student with the same PEFT model with its adapter disabled, fed the teacher view (the
  prompt, then the same dialogue). The two views supervise the same token ids in the same order, so the flattened
  supervised positions align one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from genpi.data import BEHAVIOUR, IGNORE, PROMPT_GENERATION


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, length)`` mask of the positions whose logits predict a supervised next token."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per-token generalized Jensen-Shannon divergence between two ``(tokens, vocab)`` logit blocks.

    With the mixture ``M = beta·P_teacher + (1 - beta)·P_student`` it is
    ``beta·KL(P_teacher || M) + (1 - beta)·KL(P_student || M)`` (Agarwal et al. 2024, GKD). The endpoints are
    taken as the plain divergences: ``beta = 0`` gives ``KL(teacher || student)``, ``beta = 1`` gives
    ``KL(student || teacher)``.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta <= 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if beta >= 1.0:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log1p(-beta)]), dim=0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1.0 - beta) * (s.exp() * (s - m)).sum(-1)


class GenPITrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the GenPI joint loss over batches from :class:`genpi.data.GenPICollator`.

    Args:
        w_sft, w_pg, w_kl: weights of the behaviour, prompt-generation and KL terms.
        kl_beta, kl_temperature: the generalized JSD's mix and temperature.
        Everything else goes to ``SFTTrainer``. Pass ``remove_unused_columns=False`` and
        ``dataset_kwargs={"skip_prepare_dataset": True}`` in its config: the views are tokenized already.
    """

    # `compute_loss` returns per-micro-batch means, so `Trainer` must divide by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, w_sft: float = 1.0, w_pg: float = 0.0, w_kl: float = 0.0, kl_beta: float = 0.5,
                 kl_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_sft, self.w_pg, self.w_kl = float(w_sft), float(w_pg), float(w_kl)
        self.kl_beta, self.kl_temperature = float(kl_beta), float(kl_temperature)
        if self.w_kl and not hasattr(self.accelerator.unwrap_model(self.model), "disable_adapter"):
            raise ValueError("the KL term needs a PEFT model: its teacher is the same model with the adapter disabled")

    def _teacher_logits(self, model, inputs) -> torch.Tensor:
        """Logits of the base model (adapter off) on the teacher view's supervised positions, without gradient."""
        keep = scored_positions(inputs["teacher_labels"])
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            out = model(input_ids=inputs["teacher_input_ids"], attention_mask=inputs["teacher_attention_mask"],
                        logits_to_keep=keep, use_cache=False)
        return out.logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, task = inputs["labels"], inputs["task"]
        keep = scored_positions(labels)
        targets = labels[:, 1:][keep[:, :-1]]
        token_task = task[:, None].expand_as(keep)[keep]
        beh, pg = token_task == BEHAVIOUR, token_task == PROMPT_GENERATION

        use_kl = self.w_kl > 0 and "teacher_input_ids" in inputs
        teacher_logits = self._teacher_logits(model, inputs) if use_kl else None

        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep,
                    use_cache=False)
        logits = out.logits  # (supervised tokens, vocab), rows in batch order
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        l_sft = nll[beh].sum() / beh.sum().clamp(min=1)
        l_pg = nll[pg].sum() / pg.sum().clamp(min=1)
        loss = self.w_sft * l_sft + self.w_pg * l_pg
        terms = {"loss/sft": l_sft}
        if pg.any() or self.w_pg:
            terms["loss/pg"] = l_pg
        if use_kl:
            teacher_targets = inputs["teacher_labels"][:, 1:][scored_positions(inputs["teacher_labels"])[:, :-1]]
            if not torch.equal(teacher_targets, targets[beh]):
                raise RuntimeError("teacher and behaviour views do not supervise the same tokens: views are misbuilt")
            kl = generalized_jsd(logits[beh], teacher_logits, self.kl_beta, self.kl_temperature)
            l_kl = kl.sum() / beh.sum().clamp(min=1)
            loss = loss + self.w_kl * l_kl
            terms["loss/kl"] = l_kl

        mode = "train" if model.training else "eval"
        for name, value in terms.items():
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())
        return (loss, out) if return_outputs else loss
