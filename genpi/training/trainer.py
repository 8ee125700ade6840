"""The GenPI trainer: TRL's ``SFTTrainer`` with the joint loss in ``compute_loss``.

``L = w_sft·L_behaviour + w_pg·L_prompt_generation + w_kl·L_kl + w_onpolicy·L_onpolicy``

* Behaviour and prompt-generation rows share **one** forward pass; each loss is the mean over its own supervised
  tokens, so a long prompt-generation target does not drown the behaviour loss (or the reverse).
* Logits are computed only where a label is supervised (``logits_to_keep`` with a boolean mask), never for the
  whole ``(batch, length, vocab)`` block.
* Rows may hold several packed sequences (see :class:`genpi.training.collator.GenPICollator`); ``task`` and ``seq`` say, per
  position, which loss a label feeds and which example it belongs to.
* The KL term (forward ``KL(teacher || student)`` by default, times ``T²``) compares the student with the same PEFT
  model with its adapter disabled, fed the teacher view (the prompt, then the same dialogue). The two views supervise the same token ids in the same order within each
  example, so the supervised positions, sorted by example, align one to one.
* The on-policy term (GKD's on-policy mode, Agarwal et al. 2024, applied to context distillation): the student,
  adapter on and without the prompt, samples a reply to each input of the batch; the same model with the adapter
  disabled and the prompt in context scores it; the loss is the reverse ``KL(student || teacher)`` over the whole
  vocabulary at every sampled position. The student then learns on the contexts it reaches itself, not only on
  the teacher's text.
* A soft prompt (PEFT prompt tuning or a KV prefix) trains the same way: PEFT puts it before every row, and prompt
  tuning's virtual positions come back in the logits, so they are skipped.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from genpi.training.views import BEHAVIOUR, IGNORE, PROMPT_GENERATION


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


def kl_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.0,
            temperature: float = 1.0) -> torch.Tensor:
    """The per-token distillation term: :func:`generalized_jsd` times ``temperature²``.

    ``beta = 0`` (the default) is the forward ``KL(teacher || student)`` of context distillation (Snell et al. 2022);
    the ``T²`` factor keeps the gradients' scale independent of the temperature (Hinton et al. 2015).
    """
    return generalized_jsd(student_logits, teacher_logits, beta, temperature) * temperature**2


@dataclass
class GenPIConfig(SFTConfig):
    """TRL's ``SFTConfig`` plus the GenPI loss, as TRL's own trainers carry theirs (``GKDConfig``, ``DPOConfig``).

    The views are tokenized already (``genpi.training.views.build_examples``), so the defaults keep every column
    and skip TRL's dataset preparation. Every other ``TrainingArguments`` field (``report_to``, ``save_steps``,
    ...) works as in any TRL script.
    """

    w_sft: float = field(default=1.0, metadata={"help": "weight of the behaviour loss"})
    w_pg: float = field(default=0.0, metadata={"help": "weight of the prompt-generation loss"})
    w_kl: float = field(default=0.0, metadata={"help": "weight of the KL term to the prompted teacher"})
    kl_beta: float = field(default=0.0, metadata={"help": "0 = forward KL(teacher||student), 1 = reverse, between = JSD"})
    kl_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the KL term (scaled by T²)"})
    w_onpolicy: float = field(default=0.0, metadata={"help": "weight of the reverse KL on the student's own samples"})
    onpolicy_max_new_tokens: int = field(default=64, metadata={"help": "tokens sampled per input for the on-policy term"})
    onpolicy_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the on-policy replies"})
    remove_unused_columns: bool = False
    # TRL turns the deprecated alias on by default; left unset, transformers' `activation_checkpointing` decides.
    gradient_checkpointing: bool | None = None
    dataset_kwargs: dict | None = field(default_factory=lambda: {"skip_prepare_dataset": True})


class GenPITrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the GenPI joint loss over batches from
    :class:`genpi.training.collator.GenPICollator`, with its weights in a :class:`GenPIConfig`::

        trainer = GenPITrainer(model=model, args=GenPIConfig(output_dir="out", w_sft=0.7, w_pg=0.3),
                               train_dataset=Dataset.from_list(examples), peft_config=LoraConfig(...),
                               data_collator=GenPICollator(tokenizer.pad_token_id), processing_class=tokenizer)
    """

    # `compute_loss` returns per-micro-batch means, so `Trainer` must divide by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        from genpi.models import quiet_peft

        with quiet_peft():  # SFTTrainer wraps the model with PEFT, which reads a deprecated attribute
            super().__init__(*args, **kwargs)
        if not isinstance(self.args, GenPIConfig):
            raise TypeError("GenPITrainer takes its loss weights from args: pass a GenPIConfig")
        a = self.args
        self.w_sft, self.w_pg, self.w_kl = float(a.w_sft), float(a.w_pg), float(a.w_kl)
        self.kl_beta, self.kl_temperature = float(a.kl_beta), float(a.kl_temperature)
        self.w_onpolicy = float(a.w_onpolicy)
        if (self.w_kl or self.w_onpolicy) and not hasattr(self.accelerator.unwrap_model(self.model), "disable_adapter"):
            raise ValueError("the KL terms need a PEFT model: the teacher is the same model with the adapter disabled")
        # Tokens of the on-policy term's forward passes: the student's rows (with gradient), and the sampling and the
        # teacher's rows (without); added to genpi.json's training cost.
        self.onpolicy_tokens = {"student": 0, "sampled": 0, "teacher": 0}
        config = getattr(self.accelerator.unwrap_model(self.model), "active_peft_config", None)
        self.soft_prompt = bool(config is not None and config.is_prompt_learning)

    @staticmethod
    def _model_inputs(inputs, prefix: str = "") -> dict:
        keys = ("input_ids", "attention_mask", "position_ids")
        return {k: inputs[prefix + k] for k in keys if prefix + k in inputs}

    def _teacher_logits(self, model, inputs, keep) -> torch.Tensor:
        """Logits of the base model (adapter off) on the teacher view's supervised positions, without gradient."""
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            out = model(**self._model_inputs(inputs, "teacher_"), logits_to_keep=keep, use_cache=False)
        return out.logits

    def _virtual_positions(self, model) -> int:
        """Leading logit positions that are prompt tuning's virtual tokens (0 for every other adapter)."""
        unwrapped = self.accelerator.unwrap_model(model)
        config = getattr(unwrapped, "active_peft_config", None)
        return int(config.num_virtual_tokens) if config is not None and config.peft_type == "PROMPT_TUNING" else 0

    def _pad(self, rows: list[list[int]], left: bool):
        device = self.accelerator.device
        width = max(len(r) for r in rows)
        pad = self.processing_class.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            at = width - len(r) if left else 0
            ids[i, at : at + len(r)] = torch.tensor(r, device=device)
            mask[i, at : at + len(r)] = 1
        return ids, mask

    def sample_replies(self, model, contexts: list[list[int]]) -> list[list[int]]:
        """The student's own replies (adapter on, no prompt) to ``contexts``, each through its end-of-turn token."""
        from transformers import GenerationConfig

        unwrapped = self.accelerator.unwrap_model(model)
        tokenizer = self.processing_class
        ids, mask = self._pad(contexts, left=True)
        config = GenerationConfig(do_sample=True, temperature=self.args.onpolicy_temperature, top_k=0, top_p=1.0,
                                  max_new_tokens=self.args.onpolicy_max_new_tokens,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = unwrapped.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        finally:
            model.train(was_training)
        replies = []
        for row in out[:, ids.shape[1] :].tolist():
            end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            replies.append(row[:end])
        return replies

    def onpolicy_loss(self, model, inputs) -> torch.Tensor:
        """Mean reverse ``KL(student || teacher)`` per token over replies the student samples itself."""
        students, teachers = inputs["op_student_ids"], inputs["op_teacher_ids"]
        replies = self.sample_replies(model, students)
        s_ids, s_mask = self._pad([c + r for c, r in zip(students, replies)], left=False)
        t_ids, t_mask = self._pad([c + r for c, r in zip(teachers, replies)], left=False)
        s_keep = torch.zeros_like(s_ids, dtype=torch.bool)
        t_keep = torch.zeros_like(t_ids, dtype=torch.bool)
        for i, (s, t, r) in enumerate(zip(students, teachers, replies)):  # the logits predicting each reply token
            s_keep[i, len(s) - 1 : len(s) - 1 + len(r)] = True
            t_keep[i, len(t) - 1 : len(t) - 1 + len(r)] = True
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            teacher = model(input_ids=t_ids, attention_mask=t_mask, logits_to_keep=t_keep, use_cache=False).logits
        student = model(input_ids=s_ids, attention_mask=s_mask, logits_to_keep=s_keep, use_cache=False).logits
        self.onpolicy_tokens["student"] += int(s_mask.sum())
        self.onpolicy_tokens["teacher"] += int(t_mask.sum())
        self.onpolicy_tokens["sampled"] += sum(len(c) + len(r) for c, r in zip(students, replies))
        return kl_term(student, teacher, beta=1.0).mean()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from genpi.models import quiet_peft

        terms, loss, out = {}, None, None
        if self.w_sft or self.w_pg or self.w_kl:
            with quiet_peft() if self.soft_prompt else nullcontext():  # PEFT passes a KV prefix the deprecated way
                loss, out, terms = self._offline_loss(model, inputs)
        if self.w_onpolicy and "op_student_ids" in inputs:
            l_op = self.onpolicy_loss(model, inputs)
            loss = self.w_onpolicy * l_op if loss is None else loss + self.w_onpolicy * l_op
            terms["loss/onpolicy"] = l_op
        mode = "train" if model.training else "eval"
        for name, value in terms.items():
            if isinstance(value, tuple):  # (sum, tokens): a mean over every process's tokens, not logged without any
                total, count = (self.accelerator.gather_for_metrics(v.detach().float().reshape(1)).sum() for v in value)
                if count > 0:
                    self._metrics[mode][name].append((total / count).item())
                continue
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())
        return (loss, out) if return_outputs else loss

    def _offline_loss(self, model, inputs):
        """The behaviour, prompt-generation and KL terms on the synthesized text: ``(loss, outputs, terms)``."""
        labels = inputs["labels"]
        keep = scored_positions(labels)
        targets = labels[:, 1:][keep[:, :-1]]
        token_task = inputs["task"][keep]
        beh, pg = token_task == BEHAVIOUR, token_task == PROMPT_GENERATION

        use_kl = self.w_kl > 0 and "teacher_input_ids" in inputs
        if use_kl:
            t_keep = scored_positions(inputs["teacher_labels"])
            teacher_logits = self._teacher_logits(model, inputs, t_keep)

        virtual = self._virtual_positions(model)
        model_keep = torch.cat([keep.new_zeros((keep.shape[0], virtual)), keep], dim=1) if virtual else keep
        out = model(**self._model_inputs(inputs), logits_to_keep=model_keep, use_cache=False)
        logits = out.logits  # (supervised tokens, vocab), in row-major order of the batch
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        l_sft = nll[beh].sum() / beh.sum().clamp(min=1)
        l_pg = nll[pg].sum() / pg.sum().clamp(min=1)
        loss = self.w_sft * l_sft + self.w_pg * l_pg
        terms = {"loss/sft": l_sft}
        if pg.any() or self.w_pg:
            # With --pg-share below 1 most batches hold no prompt-generation rows: their steps log no loss/pg (a 0
            # would read as a learnt prompt). Every process gathers, so none waits on a collective the others skip.
            terms["loss/pg"] = (nll[pg].sum(), pg.sum())
        if use_kl:
            # Rows may hold several sequences in any order: a stable sort by sequence puts the supervised tokens of
            # both views in the same (sequence, position) order.
            s_order = torch.sort(inputs["seq"][keep][beh], stable=True).indices
            t_order = torch.sort(inputs["teacher_seq"][t_keep], stable=True).indices
            t_targets = inputs["teacher_labels"][:, 1:][t_keep[:, :-1]][t_order]
            if not torch.equal(t_targets, targets[beh][s_order]):
                raise RuntimeError("teacher and behaviour views do not supervise the same tokens: views are misbuilt")
            kl = kl_term(logits[beh][s_order], teacher_logits[t_order], self.kl_beta, self.kl_temperature)
            l_kl = kl.sum() / beh.sum().clamp(min=1)
            loss = loss + self.w_kl * l_kl
            terms["loss/kl"] = l_kl
        return loss, out, terms


def packing_works(model) -> bool:
    """Whether ``model`` keeps packed sequences apart (block-diagonal attention from restarting ``position_ids``).

    transformers builds that mask for models that use its generic causal-mask helpers; a model with its own mask
    code would let packed sequences see each other, so this checks, on two short sequences, that the packed logits
    equal the logits of each sequence alone.
    """
    a, b = [5, 17, 29, 41, 53, 65], [7, 19, 31, 43]
    # use_cache=False as in training: with a KV cache, transformers skips its packed-sequence detection and the
    # check would wrongly fail (and training fall back to padded rows).
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            packed = model(input_ids=torch.tensor([a + b], device=device), use_cache=False,
                           position_ids=torch.tensor([list(range(len(a))) + list(range(len(b)))], device=device)).logits
            alone = model(input_ids=torch.tensor([b], device=device), use_cache=False).logits
        finally:
            model.train(was_training)
    exact = alone.dtype == torch.float32
    packed, alone = packed[0, len(a):].float(), alone[0].float()
    scale = float(alone.abs().max())
    # Leaked attention moves logits by whole units; bf16/fp16 rounding of logits around 20 is about 0.1.
    tol = 1e-3 * (1 + scale) if exact else 0.02 * scale
    return bool((packed - alone).abs().max() <= tol)


def attention_cost(config) -> float:
    """Attention work per token and per position of context, relative to the rest of a forward's work per token.

    Per token, the linear layers cost about one multiply-add per non-embedding weight, and attention about
    ``2 · hidden · layers`` per position it looks at (scores and weighted sum). Used to choose packed row widths.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    inter = getattr(text, "intermediate_size", 4 * hidden)
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", heads) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    per_layer = hidden * (heads * head_dim) * 2 + hidden * (kv * head_dim) * 2 + 3 * hidden * inter
    return 2 * heads * head_dim * layers / (per_layer * layers)
