"""The served models and the chat completions in flight on them: a checked request turned into engine requests,
their tokens gathered back into an OpenAI reply or a stream of chunks, and the work of a client that has gone
cancelled in the engine.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from genpi.errors import UserError
from genpi.serving import protocol
from genpi.serving.protocol import APIError, ChatParams


@dataclass
class Served:
    """One model name the server answers for."""

    name: str
    model: object
    tokenizer: object
    engine: object
    context: list[dict] = field(default_factory=list)  # messages put before every request (an adapter's student context)
    variant: str = ""  # the engine variant: the adapter's name in a shared per-row LoRA engine, else ""
    input_prefix: str = ""  # a transcript prompt's open user turn, put before the first user message
    temperature: float = 0.0
    top_p: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the tokenizer (shared by the served models)

    def decode(self, ids: list[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)


class ClientGone(Exception):
    """The client closed its connection before its reply was complete."""


class Call:
    """One chat completion in flight: its ``n`` engine requests, and their tokens as events in order."""

    def __init__(self, served: Served, params: ChatParams, ids: list[int], max_new_tokens: int):
        from genpi.serving.engine import Request

        self.served, self.params = served, params
        self.id, self.created, self.started = protocol.completion_id(), int(time.time()), time.perf_counter()
        self.events: queue.Queue = queue.Queue()  # (choice, token, TokenLogprob | None); token None: choice done
        self.texts = [protocol.ReplyText(served.decode, params.stop) for _ in range(params.n)]
        with served.lock:
            self.token_text = protocol.TokenText(served.tokenizer)
        temperature = served.temperature if params.temperature is None else params.temperature
        top_p = (served.top_p if params.top_p is None else params.top_p) or 1.0
        self.futures = []
        for i in range(params.n):  # seeded choices differ from each other and repeat across calls
            seed = None if params.seed is None else params.seed + i
            request = Request(ids, max_new_tokens, temperature, top_p, seed, tuple(params.stop),
                              params.top_logprobs if params.logprobs else None,
                              on_token=lambda token, info, i=i: self.events.put((i, token, info)))
            future = served.engine.submit(request, served.variant)
            future.add_done_callback(lambda f, i=i: self.events.put((i, None, None)))
            self.futures.append(future)

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()

    def _events(self, alive: Callable[[], bool]) -> Iterator[tuple]:
        """Events until every choice is done; a client found gone cancels the call (checked every 0.1 s)."""
        left = self.params.n
        while left:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                if not alive():
                    self.cancel()
                    raise ClientGone() from None
                continue
            left -= event[1] is None
            yield event

    def _results(self) -> list:
        return [f.result() for f in self.futures]  # raises what the engine raised

    def _usage(self, results) -> dict:
        out = sum(len(c.ids) + (c.finish_reason == "stop" and not t.cut) for c, t in zip(results, self.texts))
        return protocol.usage(results[0].prompt_tokens, out, results[0].cached_tokens)

    def reply(self, alive: Callable[[], bool]) -> dict:
        """The whole ``chat.completion`` once every choice is done."""
        for _ in self._events(alive):
            pass
        results = self._results()
        choices = []
        for i, (c, text) in enumerate(zip(results, self.texts)):
            text.ids = list(c.ids)
            logprobs = None
            if c.logprobs is not None:
                logprobs = {"content": [self.token_text.content(t, lp.logprob, lp.top) for t, lp in zip(c.ids, c.logprobs)],
                            "refusal": None}
            choices.append({"index": i, "message": {"role": "assistant", "content": text.end(), "refusal": None},
                            "logprobs": logprobs, "finish_reason": c.finish_reason})
        return protocol.completion(self.id, self.served.name, choices, self._usage(results))

    def stream(self, alive: Callable[[], bool]) -> Iterator[dict]:
        """``chat.completion.chunk`` objects: each choice's role, its text as it comes, its finish reason, then
        the usage when asked for (``stream_options.include_usage``)."""
        with_usage = self.params.include_usage

        def chunk(choice: int, delta: dict, logprobs=None, finish=None) -> dict:
            return protocol.chunk(self.id, self.created, self.served.name,
                                  [{"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                                  None, with_usage)

        for i in range(self.params.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        for choice, token, info in self._events(alive):
            text = self.texts[choice]
            if token is None:
                future = self.futures[choice]
                if future.cancelled() or future.exception() is not None:
                    continue  # raised below, from the results
                rest = text.end()
                if rest:
                    yield chunk(choice, {"content": rest})
                yield chunk(choice, {}, finish=future.result().finish_reason)
                continue
            delta = text.push(token)
            logprobs = {"content": [self.token_text.content(token, info.logprob, info.top)], "refusal": None} \
                if info is not None else None
            if delta or logprobs:
                yield chunk(choice, {"content": delta}, logprobs)
        results = self._results()
        if with_usage:
            yield protocol.chunk(self.id, self.created, self.served.name, [], self._usage(results), True)

    def summary(self) -> str:
        """Tokens and timing for the request log (after the call is done)."""
        done = [f.result() for f in self.futures if f.done() and not f.cancelled() and f.exception() is None]
        if not done:
            return f"model={self.served.name} n={self.params.n}"
        first = min(c.first_token_seconds for c in done)
        return (f"model={self.served.name} n={self.params.n} stream={'yes' if self.params.stream else 'no'} "
                f"prompt={done[0].prompt_tokens} cached={done[0].cached_tokens} "
                f"completion={sum(len(c.ids) for c in done)} queued={done[0].queued_seconds:.3f}s ttft={first:.3f}s")


class Backend:
    """Loaded models, each with its engine (which batches the requests of concurrent connections).

    Args:
        served: model name -> :class:`Served`.
        log: a function taking one line (the request log and the periodic engine report).
        log_every: seconds between engine reports.
        max_waiting: requests a model may hold waiting for a row; past it a request is answered 503 with
            ``Retry-After`` instead of joining an unbounded queue.
    """

    def __init__(self, served: dict[str, Served], log=None, log_every: float = 10.0, max_waiting: int = 64):
        self.served = served
        self.log = log or (lambda line: None)
        self.max_waiting = max_waiting
        self.latency = 1.0  # seconds per request, a moving average: the Retry-After estimate
        threading.Thread(target=self._report, args=(log_every,), daemon=True, name="genpi-stats").start()

    def start(self, body) -> Call:
        """Check a request body and submit it (raises :class:`APIError`)."""
        params = protocol.parse_chat(body)
        if params.model not in self.served:
            raise APIError(404, f"model {params.model!r} is not served here; served: {', '.join(self.served)}",
                           "model", "model_not_found")
        s = self.served[params.model]
        running, waiting = s.engine.load()
        if waiting + params.n > self.max_waiting:
            retry = max(1, math.ceil(self.latency * (waiting + params.n) / max(1, s.engine.max_rows)))
            raise APIError(503, f"the server is at capacity ({running} requests decoding, {waiting} waiting): "
                           f"retry in {retry} s", code="overloaded", retry_after=retry)
        messages = params.messages
        if s.input_prefix:
            first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first is not None:
                messages = [dict(m) for m in messages]
                messages[first]["content"] = f"{s.input_prefix}\n\n{messages[first]['content']}"
        with s.lock:
            text = s.tokenizer.apply_chat_template([*s.context, *messages], tokenize=False,
                                                   add_generation_prompt=params.add_generation_prompt,
                                                   continue_final_message=params.continue_final_message)
            ids = s.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = s.engine.max_context - len(ids)
        if room < 1:
            raise APIError(400, f"the prompt has {len(ids)} tokens: more than the model's context "
                           f"({s.engine.max_context})", "messages", "context_length_exceeded")
        return Call(s, params, ids, min(params.max_tokens or min(room, 1024), room))

    def finished(self, call: Call) -> None:
        self.latency = 0.8 * self.latency + 0.2 * (time.perf_counter() - call.started)

    def health(self) -> dict:
        models = {}
        for name, s in self.served.items():
            running, waiting = s.engine.load()
            models[name] = {"running": running, "waiting": waiting, "cancelled": s.engine.stats.cancelled}
        return {"status": "ok", "models": models}

    def _report(self, every: float) -> None:
        """One log line per interval with work done: readable in a log file, quiet when idle."""
        last: dict[str, tuple] = {}
        engines: dict[int, tuple] = {}  # models sharing an engine (per-row adapters) are reported together
        for name, s in self.served.items():
            names, engine = engines.get(id(s.engine), ((), s.engine))
            engines[id(s.engine)] = ((*names, name), engine)
        while True:
            time.sleep(every)
            for names, engine in engines.values():
                name = ", ".join(names)
                st = engine.stats
                now = (st.requests, st.generated_tokens, st.prefill_tokens, st.cached_tokens, time.monotonic(),
                       st.prefill_seconds, st.decode_seconds, st.steps)
                before = last.get(name)
                last[name] = now
                if before and now[0] != before[0]:
                    dt = now[4] - before[4]
                    steps = max(1, now[7] - before[7])
                    self.log(f"{name}: {now[0] - before[0]} requests, {(now[1] - before[1]) / dt:.1f} tokens/s out, "
                             f"{(now[2] - before[2]) / dt:.0f} tokens/s prefilled, {now[3] - before[3]} prompt tokens "
                             f"reused in {dt:.0f} s; prefill {now[5] - before[5]:.1f} s, {steps} steps of "
                             f"{(now[6] - before[6]) / steps * 1000:.0f} ms ({(now[1] - before[1]) / steps:.1f} rows)")


def parse_named(values: list[str], flag: str) -> list[tuple[str, str]]:
    """``NAME=PATH`` or ``PATH`` values of a repeated flag as ``(name, path)``, the name defaulting to the path's
    last part (one-line errors for an empty part or a name given twice)."""
    out, seen = [], set()
    for value in values:
        name, sep, path = str(value).partition("=")
        if not sep:
            name, path = Path(value).name, str(value)
        if not name or not path:
            raise UserError(f"{flag} {value!r}: give NAME=PATH or PATH")
        if name in seen:
            raise UserError(f"{flag} {value!r}: another served model is already named {name!r}; give each its own "
                            f"name ({flag} NAME=PATH)")
        seen.add(name)
        out.append((name, path))
    return out


def load_served(model_name: str, adapters: list[str] = (), served_name: str | None = None, rows: int = 16,
                prompts: list[str] = (), merge: bool = False) -> dict[str, Served]:
    """The base model under ``served_name`` (default: its name as given), each adapter (``NAME=DIR`` or ``DIR``)
    and each prompt (``NAME=FILE``: the base model with that prompt before every conversation, its KV cached).

    Adapters run per request over the one base model in one engine (per-row LoRA, :mod:`genpi.serving.adapters`),
    so requests for different adapters decode in the same batches; with ``merge`` each adapter is merged into its
    own copy of the base with an engine of its own (no LoRA work per token; one model copy per adapter).
    """
    import torch

    from genpi.adapter import read_adapter, require_mergeable
    from genpi.models import load_adapter, load_model, load_tokenizer
    from genpi.prompt import load_prompt
    from genpi.serving.adapters import RowLoRA
    from genpi.serving.engine import Engine

    named = parse_named(adapters, "--adapter")
    named_prompts = parse_named(prompts, "--prompt")
    base_name = served_name or model_name
    names = [base_name, *(n for n, _ in named), *(n for n, _ in named_prompts)]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise UserError(f"two served models are named {clash!r}: give each --adapter and --prompt its own NAME=")
    infos = {}
    for name, path in named:  # before any model loads
        adapter_dir, peft_config, info = read_adapter(path)
        require_mergeable(adapter_dir, peft_config, "served (`genpi serve` serves LoRA adapters)")
        infos[name] = (adapter_dir, info)
    loaded_prompts = [(name, load_prompt(path)) for name, path in named_prompts]

    tokenizer = load_tokenizer(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lock = threading.Lock()  # one tokenizer for every served model: fast tokenizers are not safe across threads

    def decode(ids):
        with lock:
            return tokenizer.decode(ids, skip_special_tokens=True)

    def engine_for(model, lora=None):
        model.to(device).eval()
        cfg = model.generation_config
        eos = getattr(cfg, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tokenizer.eos_token_id}
        return Engine(model, eos_ids - {None}, tokenizer.pad_token_id, rows=rows, decode=decode, lora=lora)

    def entry(name, model, engine, context=(), variant="", input_prefix=""):
        cfg = model.generation_config
        sampled = bool(getattr(cfg, "do_sample", False))
        return Served(name, model, tokenizer, engine, list(context), lock=lock, variant=variant,
                      input_prefix=input_prefix,
                      temperature=float(cfg.temperature or 1.0) if sampled else 0.0,
                      top_p=float(cfg.top_p or 1.0) if sampled else 1.0)

    base = load_model(model_name)
    lora = None if merge or not named else RowLoRA(base.to(device))
    for name, (adapter_dir, _) in infos.items():
        if lora is not None:
            lora.add(name, adapter_dir)
    engine = engine_for(base, lora)
    served = {base_name: entry(base_name, base, engine)}
    for name, prompt in loaded_prompts:
        served[name] = entry(name, base, engine, prompt.messages, input_prefix=prompt.input_prefix)
    for name, (adapter_dir, info) in infos.items():
        if lora is not None:
            served[name] = entry(name, base, engine, info.student_context, variant=name)
        else:
            merged = load_adapter(load_model(model_name), adapter_dir).merge_and_unload()
            served[name] = entry(name, merged, engine_for(merged), info.student_context)
    return served
