"""Chat clients: a ``Protocol``, one implementation over the ``openai`` SDK, and a fake for tests.

Synthesis speaks only the OpenAI chat protocol, so any compatible server works (OpenAI, vLLM, Ollama, llama.cpp,
``transformers serve``). Transient failures (429, 5xx, timeouts, connection errors) are retried with exponential
backoff and jitter; client errors (400, 401, 403, 404) are not, since retrying cannot fix them.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Protocol

from genpi.errors import UserError


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    cached_tokens: int = 0  # prompt tokens the server reused from its prefix cache, when it says so


class ChatClient(Protocol):
    """Anything that answers a list of chat messages."""

    def chat(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        stop: list[str] | None = None,
        continue_final: bool = False,
    ) -> ChatResult:
        """The reply to ``messages``; with ``continue_final`` the final message is continued instead of answered
        (vLLM's ``continue_final_message``: an open user turn makes the model write the user's message)."""


class OpenAIChatClient:
    """A chat client over the ``openai`` SDK with tenacity retries.

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as the SDK does; the key
    is held by the SDK client only and never written anywhere by genpi.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 120.0, retries: int = 5):
        import openai

        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.public_url = public_url(self.base_url)  # what messages show: no user:password, no query string
        # Local servers need no key, but the SDK insists on one being set.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        # The SDK's own retries are off: tenacity below owns the policy, so it is the same for every server.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=0)
        self.retries = retries
        self.retry_count = 0
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop retrying: calls in flight fail at their next error instead of backing off (used on Ctrl-C)."""
        self._closed = True

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None, continue_final=False) -> ChatResult:
        import openai
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        def before_sleep(_state):
            with self._lock:
                self.retry_count += 1

        kwargs = dict(model=model, messages=messages, temperature=temperature, max_tokens=max_tokens)
        if seed is not None:
            kwargs["seed"] = seed
        if stop:
            kwargs["stop"] = list(stop)[:4]  # the OpenAI API takes four at most
        if continue_final:  # vLLM's names; the genpi server takes them too
            kwargs["extra_body"] = {"add_generation_prompt": False, "continue_final_message": True}
        try:
            for attempt in Retrying(
                retry=retry_if_exception(lambda e: not self._closed and is_transient(e)),
                stop=stop_after_attempt(self.retries),
                wait=wait_random_exponential(multiplier=0.5, max=20),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    response = self._client.chat.completions.create(**kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise UserError(f"the server at {self.public_url} refused the API key ({e.status_code}): "
                            "set OPENAI_API_KEY (or --api-key) to a key it accepts") from None
        except openai.NotFoundError:
            raise UserError(f"the server at {self.public_url} has no model {model!r} (404): pass --model with a model "
                            "it serves, and check that --base-url ends in /v1") from None
        except openai.BadRequestError as e:
            if continue_final and "continue_final_message" in str(e.message):
                raise UserError(f"the server at {self.public_url} cannot continue an open user turn "
                                "(continue_final_message): pass --input-sampler roleswap") from None
            raise
        except openai.APITimeoutError:
            raise  # this call took too long every time: an error of this call (its record keeps it), not of the server
        except openai.APIConnectionError:
            raise UserError(f"cannot reach the chat server at {self.public_url}: start it or fix --base-url") from None
        choice = response.choices[0]
        usage = response.usage
        details = getattr(usage, "prompt_tokens_details", None)  # OpenAI, vLLM and the genpi server report reuse here
        return ChatResult(
            text=choice.message.content or "",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            finish_reason=choice.finish_reason or "",
            cached_tokens=getattr(details, "cached_tokens", 0) or 0,
        )


def public_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, query string or fragment, so no credential reaches a file or log."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        name = parts.hostname and (f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname)
        host = name and name + (f":{parts.port}" if parts.port else "")
    except ValueError:
        raise UserError("--base-url is not a valid URL: give one such as http://localhost:8000/v1") from None
    if not host:
        return url.split("?", 1)[0].split("#", 1)[0]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, timeouts, dropped connections."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


@dataclass
class FakeChatClient:
    """A deterministic, offline chat client for unit tests and ``--dry-run`` style checks.

    It answers by simple rules so that every synthesis step has something to parse: a new request when it plays
    the user, an ``end_marker`` reply from the environment after ``end_after`` turns, and an echo of the last
    message otherwise. Every call is kept in ``calls`` for assertions.
    """

    end_after: int = 2
    end_marker: str = "<END>"
    calls: list = field(default_factory=list)
    fail_every: int = 0  # raise on every n-th call (0 = never): exercises error records

    def __post_init__(self):
        self._lock = threading.Lock()

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None, continue_final=False) -> ChatResult:
        with self._lock:
            self.calls.append({"messages": messages, "model": model, "seed": seed, "temperature": temperature,
                               "stop": stop, "continue_final": continue_final, "max_tokens": max_tokens})
            n = len(self.calls)
        if self.fail_every and n % self.fail_every == 0:
            raise RuntimeError(f"injected failure on call {n}")
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        last = messages[-1]["content"]
        if last == "Next request?" or continue_final:
            n = seed or 0
            text = f"Please handle request number {n} about topic {n * 7 % 101} for me"
        elif "[ROLE PLAY]" in system:
            turns = sum(1 for x in messages if x["role"] == "user" and x["content"].startswith("answer("))
            text = f"env reply {turns} to: {last[:40]}" + (f" {self.end_marker}" if turns >= self.end_after else "")
        elif "[REASON]" in last:
            text = "The prompt requires a different format."
        else:
            text = f"answer({model}): {last[:60]}"
        return ChatResult(text=text, prompt_tokens=sum(len(x["content"].split()) for x in messages), completion_tokens=len(text.split()), finish_reason="stop")
