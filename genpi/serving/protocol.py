"""The OpenAI chat completions wire format: a request body checked into :class:`ChatParams`, and the JSON a reply,
a streamed chunk, a token's log-probabilities or an error is sent as.

Shapes follow the OpenAI API reference (``chat.completion``, ``chat.completion.chunk``, ``logprobs.content[]``
with ``token``, ``logprob``, ``bytes`` and ``top_logprobs``, and ``{"error": {message, type, param, code}}``), so
that the ``openai`` SDK and every client written against it parse them as OpenAI's own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

# Fields that would change the reply's shape and that genpi does not implement: refused, never ignored.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias", "audio",
               "modalities", "prediction")
ROLES = ("system", "user", "assistant")
MAX_TOP_LOGPROBS = 20  # OpenAI's bound


class APIError(Exception):
    """A request the server answers with an error: ``status``, a one-line message, the offending ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.retry_after = status, param, code, retry_after

    def body(self) -> dict:
        kind = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error"}.get(self.status,
                                                                                                    "server_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatParams:
    """A checked chat completion request (sampling settings left ``None`` take the served model's defaults)."""

    model: str
    messages: list[dict]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    include_usage: bool = False
    add_generation_prompt: bool = True  # vLLM's: open the assistant's turn after the messages
    continue_final_message: bool = False  # vLLM's: leave the final message open and continue it


def _number(body: dict, key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(400, f"{key} must be a number from {low:g} to {high:g}, not {value!r}", key)
    return float(value)


def _integer(body: dict, key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise APIError(400, f"{key} must be an integer {bound}, not {value!r}", key)
    return value


def parse_chat(body) -> ChatParams:
    """The request body as :class:`ChatParams`, or :class:`APIError` naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False, [], "", {}):
            raise APIError(400, f"{key!r} is not supported by the genpi server", key, "unsupported_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
        raise APIError(400, "messages must be a non-empty list of {role: system|user|assistant, content: text}",
                       "messages")
    if not isinstance(body.get("model"), str):
        raise APIError(400, "model must be the name of a served model (GET /v1/models lists them)", "model")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(x, str) and x for x in stop):
        raise APIError(400, "stop must be a string or a list of at most 4 non-empty strings", "stop")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise APIError(400, f"logprobs must be true or false, not {logprobs!r}", "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise APIError(400, "stream must be true or false and stream_options an object", "stream")
    if options and not stream:
        raise APIError(400, "stream_options needs stream: true", "stream_options")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    generation_prompt, continue_final = body.get("add_generation_prompt", True), body.get("continue_final_message", False)
    for key, value in (("add_generation_prompt", generation_prompt), ("continue_final_message", continue_final)):
        if not isinstance(value, bool):
            raise APIError(400, f"{key} must be true or false", key)
    if generation_prompt and continue_final:
        raise APIError(400, "continue_final_message needs add_generation_prompt false: the final message is "
                            "continued, no new turn is opened", "continue_final_message")
    return ChatParams(
        model=body["model"], messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        max_tokens=max_tokens if max_tokens is not None else _integer(body, "max_tokens", 1),
        temperature=_number(body, "temperature", 0, 2), top_p=_number(body, "top_p", 0, 1),
        seed=_integer(body, "seed", -(2**63)), stop=stop, n=_integer(body, "n", 1, 128) or 1,
        logprobs=logprobs, top_logprobs=top or 0, stream=stream, include_usage=bool(options.get("include_usage")),
        add_generation_prompt=generation_prompt, continue_final_message=continue_final)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion(cid: str, model: str, choices: list[dict], usage_: dict) -> dict:
    """A ``chat.completion``: ``choices`` as ``{index, message, logprobs, finish_reason}``."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_}


def chunk(cid: str, created: int, model: str, choices: list[dict], usage_: dict | None = None,
          with_usage: bool = False) -> dict:
    """A ``chat.completion.chunk``; with ``stream_options.include_usage`` every chunk has ``usage`` (null but in
    the last one, whose ``choices`` are empty)."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if with_usage:
        out["usage"] = usage_
    return out


def _byte_table() -> dict[str, int]:
    """The characters byte-level BPE vocabularies (GPT-2 and its descendants) write each byte as."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTES = _byte_table()


class TokenText:
    """Each token's text and exact bytes for ``logprobs`` (a byte-level BPE token may hold part of a character:
    its bytes are then that part, its text the replacement character, as one token decoded alone)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self.cache:
            text = self.tokenizer.decode([token])
            piece = self.tokenizer.convert_ids_to_tokens(token)
            raw = [_BYTES[ch] for ch in piece] if isinstance(piece, str) and all(ch in _BYTES for ch in piece) else None
            self.cache[token] = (text, raw if raw is not None else list(text.encode("utf-8")))
        return self.cache[token]

    def content(self, token: int, logprob: float, top: list[tuple[int, float]]) -> dict:
        """One entry of ``logprobs.content``."""
        text, raw = self(token)
        alternatives = []
        for t, lp in top:
            t_text, t_raw = self(t)
            alternatives.append({"token": t_text, "logprob": lp, "bytes": t_raw})
        return {"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives}


class ReplyText:
    """A reply's text as its tokens arrive: what may be sent so far, and the final text cut before a stop string.

    Text that could still turn out to begin a stop string (its last ``len(longest stop) - 1`` characters) or that
    ends in an incomplete character is held back until the next token or the end, so a stream never sends what the
    full reply would not contain.
    """

    def __init__(self, decode, stop: list[str]):
        self.decode, self.stop = decode, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0

    @property
    def cut(self) -> bool:
        """Whether a stop string ended the reply (then no end-of-text token was generated)."""
        text = self.decode(self.ids)
        return any(s in text for s in self.stop)

    def final(self) -> str:
        text = self.decode(self.ids)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(cuts)] if cuts else text  # OpenAI: the stop string and what follows are not returned

    def push(self, token: int) -> str:
        """Add a token; the text that can be sent now."""
        self.ids.append(token)
        text = self.final()
        ready = len(text) - self.hold if len(text) == len(self.decode(self.ids)) else len(text)
        while ready > self.sent and text[ready - 1] == "\ufffd":  # part of a character: wait for the rest
            ready -= 1
        return self._take(text, ready)

    def end(self) -> str:
        """The rest of the reply."""
        text = self.final()
        return self._take(text, len(text))

    def _take(self, text: str, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = text[self.sent : upto], upto
        return delta
