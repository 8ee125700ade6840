"""Batching: every behaviour and prompt-generation sequence of a batch in one tensor, packed into shared rows."""

from __future__ import annotations

from genpi.training.views import BEHAVIOUR, IGNORE, PROMPT_GENERATION


class GenPICollator:
    """Batches examples: every behaviour and prompt-generation sequence of the batch in one tensor.

    Each position carries ``task`` (which loss its label feeds; -1 on padding) and ``seq`` (the index of its
    example in the batch; -1 on padding), so that rows can hold several sequences. Teacher sequences, when every
    example has one, form a second tensor with the same ``seq`` numbering.

    With ``pack`` (the default), sequences are packed first-fit into shared rows and told apart by
    ``position_ids`` that restart at 0, with no ``attention_mask``: transformers then builds a block-diagonal
    causal mask, so no sequence sees another, and short behaviour dialogues stop costing the padding up to the long
    prompt-generation rows. Wider rows need fewer padding tokens but cost more attention (a masked row costs its
    full width squared), so with ``attention_cost`` (attention work per token and per position of row width,
    relative to the rest of the model's work per token; see :func:`genpi.trainer.attention_cost`) the row width is
    chosen, between the longest sequence and ``max_width``, to minimise ``rows·width·(1 + attention_cost·width)``;
    without it, rows are as wide as the longest sequence. Without ``pack``, each sequence is a right-padded row with
    an ``attention_mask``.
    """

    def __init__(self, pad_token_id: int, pack: bool = True, attention_cost: float | None = None,
                 max_width: int | None = None):
        self.pad_token_id = pad_token_id
        self.pack = pack
        self.attention_cost = attention_cost
        self.max_width = max_width

    @staticmethod
    def _first_fit(seqs, width: int) -> list[list]:
        bins: list[list] = []
        room: list[int] = []
        for s in sorted(seqs, key=lambda s: -len(s[0])):  # longest first
            for i, free in enumerate(room):
                if len(s[0]) <= free:
                    bins[i].append(s)
                    room[i] -= len(s[0])
                    break
            else:
                bins.append([s])
                room.append(width - len(s[0]))
        return bins

    def _packing(self, seqs) -> tuple[int, list[list]]:
        longest = max(len(s[0]) for s in seqs)
        if self.attention_cost is None:
            return longest, self._first_fit(seqs, longest)
        total = sum(len(s[0]) for s in seqs)
        cap = max(longest, self.max_width or total)
        best = None
        for k in range(1, len(seqs) + 1):  # widths that would fit everything in k rows, were there no gaps
            width = min(cap, max(longest, -(-total // k)))
            bins = self._first_fit(seqs, width)
            cost = len(bins) * width * (1 + self.attention_cost * width)
            if best is None or cost < best[0]:
                best = (cost, width, bins)
        return best[1], best[2]

    def _rows(self, seqs: list[tuple[list[int], list[int], int, int]], prefix: str = "") -> dict:
        """Tensors for ``(ids, labels, task, seq)`` sequences, packed or padded."""
        import torch

        if self.pack:
            width, bins = self._packing(seqs)
        else:
            bins = [[s] for s in seqs]
            width = max(len(s[0]) for s in seqs)
        shape = (len(bins), width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long)
        task = torch.full(shape, -1, dtype=torch.long)
        seq = torch.full(shape, -1, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.long)
        for row, b in enumerate(bins):
            at = 0
            for s_ids, s_labels, s_task, s_seq in b:
                n = len(s_ids)
                ids[row, at : at + n] = torch.tensor(s_ids)
                labels[row, at : at + n] = torch.tensor(s_labels)
                task[row, at : at + n] = s_task
                seq[row, at : at + n] = s_seq
                positions[row, at : at + n] = torch.arange(n)
                mask[row, at : at + n] = 1
                at += n
            positions[row, at:] = torch.arange(width - at)  # the padding is a block of its own
        out = {"input_ids": ids, "labels": labels, "task": task, "seq": seq}
        if self.pack:
            out["position_ids"] = positions
        else:
            out["attention_mask"] = mask
        return {prefix + k: v for k, v in out.items()}

    def __call__(self, examples: list[dict]) -> dict:
        seqs = [(e["input_ids"], e["labels"], BEHAVIOUR, i) for i, e in enumerate(examples)]
        seqs += [(e["pg_input_ids"], e["pg_labels"], PROMPT_GENERATION, i)
                 for i, e in enumerate(examples) if e.get("pg_input_ids")]
        batch = self._rows(seqs)
        if examples and all(e.get("teacher_input_ids") for e in examples):
            teacher = [(e["teacher_input_ids"], e["teacher_labels"], BEHAVIOUR, i) for i, e in enumerate(examples)]
            batch.update(self._rows(teacher, prefix="teacher_"))
        if examples and all(e.get("op_student_ids") for e in examples):  # contexts the student replies to itself
            batch["op_student_ids"] = [list(e["op_student_ids"]) for e in examples]
            batch["op_teacher_ids"] = [list(e["op_teacher_ids"]) for e in examples]
        return batch
