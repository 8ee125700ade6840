"""Generation runner: the base model loaded once, every adapter attached to it, batched greedy decoding.

Adapters are loaded into one PEFT model under their own names and switched per system; the base systems run with
the adapters disabled. Replies come from :class:`genpi.serving.engine.Engine` (continuous batching; the prompted system's
prompt is computed once, not once per input), so evaluating the prompted system costs about what the others
cost. Latency is measured apart, with lone requests through ``generate`` (:meth:`Generator.time_request`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from genpi.errors import UserError
from genpi.eval.systems import System
from genpi.prompt import AgentPrompt


@dataclass
class Generation:
    text: str
    input_tokens: int
    output_tokens: int  # generated tokens up to and including the end-of-turn token
    finish: str = "stop"  # "stop" (end of turn), "stop_string" (cut where the environment's words began), "length"


class Generator:
    """Generates each system's replies with one loaded base model.

    Args:
        model_name: base model (``"default"``, a directory or a Hub id), as ``genpi.models.resolve_model`` takes it.
        systems: the systems to serve; those with an ``adapter`` are attached now.
    """

    def __init__(self, model_name: str, systems: list[System], rows: int = 16):
        import torch
        from safetensors import SafetensorError

        from genpi.models import load_model, load_tokenizer

        self.torch = torch
        self.model_name = model_name
        self._merged: dict = {}  # system name -> its adapter merged into a copy of the base (see `merged`)
        self.tokenizer = load_tokenizer(model_name)
        self.tokenizer.padding_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            base = load_model(model_name).to(self.device)
        except OSError as e:
            raise UserError(f"cannot load base model {model_name}: {str(e).splitlines()[0]}") from None
        base.eval()
        self.n_params = sum(p.numel() for p in base.parameters())  # tied embeddings count once
        self.model = base
        self._adapter_names: dict[str, str] = {}
        self._soft: dict[str, tuple] = {}  # soft prompt system name -> (virtual tokens, keys, values)
        self._heads: dict[str, str] = {}  # prompt hash -> its rendered head (what a soft prompt replaces)
        for s in systems:  # before any LoRA is attached: a soft prompt's KV is the base model's
            if s.soft:
                self._soft[s.name] = soft_prompt_kv(base, s.adapter, model_name)
        for s in systems:
            if not s.adapter or s.soft:
                continue
            name = f"adapter{len(self._adapter_names)}"  # PEFT names become module keys: no dots or slashes
            try:
                if self._adapter_names:
                    self.model.load_adapter(s.adapter, adapter_name=name)
                else:
                    from genpi.models import load_adapter

                    self.model = load_adapter(base, s.adapter, adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                raise UserError(f"cannot load adapter {s.adapter} onto {model_name}: {str(e).splitlines()[0]}") from None
            self._adapter_names[s.name] = name
        self.model.eval()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        # the token a chat turn ends with: what the template writes after an assistant message
        self.end_of_turn = _end_of_turn(self.tokenizer, self.eos_ids)
        from genpi.serving.engine import Engine

        self.engine = Engine(self.model, self.eos_ids, self.tokenizer.pad_token_id, rows=rows,
                             decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))
        for name, (n, keys, values) in self._soft.items():
            self.engine.pin_prefix(name, self._placeholders(n), keys, values)

    def _placeholders(self, n: int) -> list[int]:
        """Ids standing for a soft prompt's ``n`` virtual tokens in a request (their KV is pinned, never computed)."""
        return [self.tokenizer.pad_token_id] * n

    def virtual_tokens(self, system: System) -> int:
        """Context tokens a soft prompt adds to every request (0 for any other system)."""
        return self._soft[system.name][0] if system.name in self._soft else 0

    def request_ids(self, system: System, prompt: AgentPrompt, conversation: list[dict]) -> list[int]:
        """The token ids ``system`` is given for ``conversation``; a soft prompt's virtual tokens replace the
        prompt's, after which come the teacher's tokens (the input with its lead-in, and the rest)."""
        text = self.render(system.messages(prompt, conversation))
        if system.name not in self._soft:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        from genpi.prompt import prompted_head

        head = self._heads.setdefault(prompt.hash, prompted_head(self.tokenizer, prompt)[0])
        if not text.startswith(head):
            raise UserError(f"{system.adapter}: the chat template renders the prompt differently for this input, so the "
                            "soft prompt cannot stand in for it")
        rest = self.tokenizer(text[len(head):], add_special_tokens=False)["input_ids"]
        return self._placeholders(self.virtual_tokens(system)) + rest

    def adapter_params(self, system: System) -> int:
        """Parameters the system's adapter adds to every token's compute (0 for the base model)."""
        name = self._adapter_names.get(system.name)
        if name is None:
            return 0
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" in n and f".{name}." in n)

    @contextmanager
    def active(self, system: System):
        """Run the model as ``system``: its adapter set, or every adapter disabled for a base system."""
        if system.adapter and not system.soft:
            self.model.set_adapter(self._adapter_names[system.name])
            yield
        elif self._adapter_names:
            with self.model.disable_adapter():
                yield
        else:
            yield

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(
        self,
        system: System,
        prompt: AgentPrompt,
        conversations: list[list[dict]],
        max_new_tokens: int,
        on_reply=None,
        stop: list[str] | None = None,
    ) -> list[Generation]:
        """Greedy replies of ``system`` to each conversation (each one starts with the bare user input).

        ``on_reply()`` is called as each reply is done (for a progress bar); a reply ends at the first of ``stop``,
        which is left out of its text.
        """
        from concurrent.futures import as_completed

        from genpi.serving.engine import Request

        if system.reply is not None:  # a constant system: the same reply to everything, no model
            for _ in conversations:
                if on_reply:
                    on_reply()
            n = len(self.tokenizer(system.reply, add_special_tokens=False)["input_ids"]) + 1
            return [Generation(system.reply, 0, n) for _ in conversations]
        ids = [self.request_ids(system, prompt, c) for c in conversations]
        with self.active(system):
            futures = [self.engine.submit(Request(x, max_new_tokens, stop=tuple(stop or ())), variant=system.name)
                       for x in ids]
            for _ in as_completed(futures):
                if on_reply:
                    on_reply()
            done = [f.result() for f in futures]
        from genpi.synth.episodes import cut_at

        out = []
        for x, c in zip(ids, done):
            decoded = self.tokenizer.decode(c.ids, skip_special_tokens=True)
            text = cut_at(decoded, stop or [])
            finish = "stop_string" if len(text) < len(decoded) else "stop" if c.finish_reason == "stop" else "length"
            out.append(Generation(text.strip(), len(x), len(c.ids) + (c.finish_reason == "stop"), finish))
        return out

    def reply_ids(self, generation: Generation) -> list[int]:
        """The tokens of a reply as a system is taught them: its text, and the end-of-turn token when the reply
        ended there (a reply cut at a stop string or at the token limit has no end in it)."""
        ids = self.tokenizer(generation.text, add_special_tokens=False)["input_ids"]
        return ids + [self.end_of_turn] if generation.finish == "stop" else ids

    def reply_logprobs(self, system: System, prompt: AgentPrompt, conversation: list[dict], reply: list[int],
                       head: tuple[list[int], object]):
        """Teacher forcing: the log-probabilities ``system`` gives each next token of ``reply`` after
        ``conversation``, one row per reply token (``[len(reply), vocab]``, fp32), in one forward pass.

        ``head`` is :meth:`prefix_cache` of ``system``: the tokens every request of it starts with are not
        computed again (for a soft prompt, they are its virtual tokens).
        """
        import copy

        from genpi.serving.engine import cache_keyword

        torch = self.torch
        ids = self.request_ids(system, prompt, conversation)
        head_ids, cache = head
        if ids[: len(head_ids)] != head_ids:
            raise ValueError(f"{system.name}: the request does not start with its cached head")
        rest = ids[len(head_ids):] + reply
        with torch.inference_mode(), self.active(system):
            logits = self.model(input_ids=torch.tensor([rest], device=self.device), use_cache=True,
                                **{cache_keyword(self.model): copy.deepcopy(cache)}).logits[0]
        start = len(ids) - len(head_ids) - 1  # the logits at a position predict the next token
        return torch.log_softmax(logits[start : start + len(reply)].float(), dim=-1)

    def prefix_cache(self, system: System, prompt: AgentPrompt) -> tuple[list[int], object]:
        """What a server with prompt caching computes once for ``system``: the tokens every request starts with
        (its context up to the input: the prompt, for the prompted system) and their KV cache."""
        import torch
        from transformers import DynamicCache

        from genpi.serving.engine import cache_keyword

        cache = DynamicCache(config=self.model.config)
        if system.name in self._soft:  # a soft prompt is a prefix computed once by construction
            n, keys, values = self._soft[system.name]
            for layer, (k, v) in enumerate(zip(keys, values)):
                cache.update(k.clone(), v.clone(), layer)
            return self._placeholders(n), cache
        from genpi.prompt import shared_head

        _, ids = shared_head(self.tokenizer, lambda x: system.messages(prompt, [{"role": "user", "content": x}]))
        with torch.inference_mode(), self.active(system):
            self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True,
                       **{cache_keyword(self.model): cache})
        return ids, cache

    def merged(self, system: System):
        """``system``'s adapter merged into its own copy of the base weights, as `genpi export --merge` and
        `genpi serve` run it (no LoRA products per token); made once."""
        if system.soft:
            raise ValueError(f"{system.name} is a soft prompt: it cannot be merged")
        if system.name not in self._merged:
            from genpi.models import load_adapter, load_model

            base = load_model(self.model_name).to(self.device)
            self._merged[system.name] = load_adapter(base, system.adapter).merge_and_unload().eval()
        return self._merged[system.name]

    def time_request(self, system: System, prompt: AgentPrompt, conversation: list[dict], max_new_tokens: int,
                     fixed_length: bool = False, prefix: tuple[list[int], object] | None = None,
                     merged: bool = False) -> dict:
        """One request alone (batch of 1), greedy: time to the first token (the prefill) and to the last.

        The first-token time is read inside the same ``generate`` call, when the first logits reach the logits
        processors, so the prompt is processed once, as in serving. With ``fixed_length`` the end-of-turn token is
        ignored and exactly ``max_new_tokens`` are decoded, so two systems do the same decoding work. With ``prefix``
        (from :meth:`prefix_cache`), a copy of its cache is passed in, made before the clock starts: only the rest
        of the request is prefilled, as on a server that caches the prompt. With ``merged``, an adapter system
        runs as :meth:`merged` makes it.
        """
        from transformers import LogitsProcessor, LogitsProcessorList

        sync = self._sync

        class FirstToken(LogitsProcessor):
            at: float | None = None

            def __call__(self, input_ids, scores):
                if self.at is None:
                    sync()
                    self.at = time.perf_counter()
                return scores

        clock = FirstToken()
        request = self.torch.tensor([self.request_ids(system, prompt, conversation)], device=self.device)
        enc = {"input_ids": request, "attention_mask": self.torch.ones_like(request)}
        if system.name in self._soft and prefix is None:  # its virtual tokens have no ids to compute: always reused
            prefix = self.prefix_cache(system, prompt)
        model = self.merged(system) if merged and system.adapter and not system.soft else self.model
        cached = {}
        if prefix is not None:
            import copy

            from genpi.serving.engine import cache_keyword

            ids, cache = prefix
            if enc["input_ids"][0, : len(ids)].tolist() != ids:
                raise ValueError("the request does not start with the cached prefix")
            cached = {cache_keyword(model): copy.deepcopy(cache)}
        with self.torch.inference_mode(), (self.active(system) if model is self.model else nullcontext()):
            sync()
            start = time.perf_counter()
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      min_new_tokens=max_new_tokens if fixed_length else 0,
                                      pad_token_id=self.tokenizer.pad_token_id, logits_processor=LogitsProcessorList([clock]),
                                      **cached)
            sync()
            end = time.perf_counter()
        row = ids[0, enc["input_ids"].shape[1] :].tolist()
        n = len(row) if fixed_length else self._until_eos(row)
        return {"prefill_s": clock.at - start, "e2e_s": end - start, "input_tokens": int(enc["input_ids"].shape[1]),
                "output_tokens": n, "text": self.tokenizer.decode(row[:n], skip_special_tokens=True)}

    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token holds in the KV cache, over all layers."""
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        element = next(self.model.parameters()).element_size()
        return 2 * c.num_hidden_layers * heads * head_dim * element

    def _sync(self) -> None:
        if self.device == "cuda":  # CUDA kernels run asynchronously: wait for them before reading the clock
            self.torch.cuda.synchronize()

    def _until_eos(self, row: list[int]) -> int:
        for j, tok in enumerate(row):
            if tok in self.eos_ids:
                return j + 1
        return len(row)


def soft_prompt_kv(base, adapter: str, model_name: str) -> tuple[int, list, list]:
    """A soft prompt as what serving it takes: its virtual tokens' keys and values under ``base``, per layer.

    A KV prefix is those already; prompt tuning's virtual token embeddings are run through ``base`` once
    (positions 0..n-1, as PEFT places them). Either way the tokens after it are computed at positions from n on,
    as in training. PEFT's prompt-learning wrapper leaves ``base``'s modules as they were.
    """
    import torch
    from transformers import DynamicCache

    from genpi.serving.engine import cache_keyword
    from genpi.models import load_adapter, quiet_peft

    try:
        with quiet_peft():
            peft = load_adapter(base, adapter)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot load soft prompt {adapter} onto {model_name}: {str(e).splitlines()[0]}") from None
    config = peft.active_peft_config
    with torch.inference_mode():
        prompt = peft.get_prompt(batch_size=1)
        if config.peft_type == "PROMPT_TUNING":
            cache = DynamicCache(config=base.config)
            base(inputs_embeds=prompt.to(next(base.parameters()).dtype), use_cache=True,
                 **{cache_keyword(base): cache})
            prompt = cache
        keys = [layer.keys.clone() for layer in prompt.layers]
        values = [layer.values.clone() for layer in prompt.layers]
    return int(config.num_virtual_tokens), keys, values


def _end_of_turn(tokenizer, eos_ids: set[int]) -> int:
    """The first end-of-sequence token the chat template writes after an assistant message."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                        tokenize=True, add_generation_prompt=False)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # a BatchEncoding in newer transformers
    return next((t for t in reversed(ids) if t in eos_ids), tokenizer.eos_token_id)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
