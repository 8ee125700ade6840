"""Continuous batched generation that computes a shared prompt prefix once: the decoding loop of the embedded
server and of ``genpi eval``.

On a CPU an agent's synthesis calls cost more in prefill than in decoding: every call carries the same long
prompt, and a dialogue's next turn carries the previous one again. The engine therefore keeps

* **rows**: a KV cache of ``rows`` independent sequences. Every step decodes one token for every active row
  together; a row that finishes hands its reply back at once and its place goes to the next waiting request, so a
  long reply never holds up the others (continuous batching);
* **a prefix store**: the KV of sequences seen before (the shared prefix of requests that arrive together, and
  every finished request with its reply), least recently used dropped first past ``prefix_bytes``. A new request
  starts from the stored sequence it shares the longest prefix with, when that is at least ``min_prefix`` tokens,
  and computes only the rest: the agent's prompt is computed once, and a dialogue's next turn only its new turns.

Rows are left-aligned (a row's token ``i`` sits at position ``i`` of its cache), each with its own length,
temperature, top-p, seed and token budget; attention masks are built here (4-D, one row each), so the model
sees exactly the tokens of its own sequence. Greedy results equal decoding each request alone, up to float
rounding. Sliding-window attention is not applied (the mask is full): use models without it, or contexts
shorter than the window.

``Completion.cached_tokens`` says how many prompt tokens came from the store (the OpenAI
``usage.prompt_tokens_details.cached_tokens``). A request can ask for each generated token's log-probability and
its most likely alternatives (``logprobs``: those of the model's raw distribution, before temperature and top-p, as
vLLM reports them) and for each token as it is produced (``on_token``, called from the engine's thread: a server
streams with it). Cancelling a request's future (``Future.cancel()``, e.g. when its client has gone) frees its row
before the next step; a request still waiting is never started.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Request:
    """One generation: prompt token ids and how to sample."""

    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the reply ends once its text contains one of these (needs the engine's `decode`)
    logprobs: int | None = None  # report each token's log-probability and this many top alternatives (None: neither)
    on_token: Callable[[int, "TokenLogprob | None"], None] | None = None  # called with each token as it is produced


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model, and the most likely tokens at its position."""

    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), most likely first


@dataclass
class Completion:
    ids: list[int]  # generated tokens, the stop token excluded
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens reached)
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix store instead of being computed
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when the request asked for them
    queued_seconds: float = 0.0  # from submission to the start of its prefill
    first_token_seconds: float = 0.0  # from submission to its first token


@dataclass
class EngineStats:
    requests: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (the rest came from the store)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class _Entry:
    ids: tuple
    keys: list  # per layer (1, kv_heads, len, head_dim)
    values: list
    nbytes: int


class PrefixStore:
    """Token sequences with their KV cache; the least recently used are dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()  # (variant, ids) -> entry
        self.nbytes = 0
        self.pinned: dict[str, int] = {}  # variant -> length of the prefix every one of its requests starts with

    def best(self, variant: str, ids: list[int], limit: int) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with ``ids[:limit]``, and that length."""
        best, length = None, 0
        for (v, _), entry in self.entries.items():
            if v == variant:
                n = common_prefix(entry.ids, ids[:limit])
                if n > length:
                    best, length = entry, n
        if best is not None:
            self.entries.move_to_end((variant, best.ids))
        return best, length

    def put(self, variant: str, entry: _Entry) -> None:
        key = (variant, entry.ids)
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        self.entries[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            oldest = next((k for k in self.entries if k != key and self.pinned.get(k[0]) != len(k[1])), None)
            if oldest is None:
                break
            self.nbytes -= self.entries.pop(oldest).nbytes

    def pin(self, variant: str, entry: _Entry) -> None:
        """Keep ``entry`` for good: every request of ``variant`` starts with its ids and reuses its KV."""
        self.pinned[variant] = len(entry.ids)
        self.put(variant, entry)


ATTENTION = "genpi_shared_prefix"


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            genpi_groups=None, **kwargs):
    """Decoding attention that reads a prefix shared by a group of rows once for the whole group.

    ``genpi_groups`` lists ``(rows, length)``: those rows hold the same first ``length`` tokens. Their queries are
    scored against the first row's cache for that prefix (one read of it for the group, not one per row) and
    against their own later positions, and the two parts are merged by their log-sum-exp, which is exactly the
    softmax over the whole row. On a CPU, decoding many rows over a long prompt is bound by reading their caches:
    this reads the prompt once per group. Anything else (prefill, rows in no group) is plain SDPA.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not genpi_groups or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    n, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    out = torch.empty((n, heads, dim), dtype=query.dtype, device=query.device)
    grouped = torch.zeros(n, dtype=torch.bool, device=query.device)
    for rows, length in genpi_groups:
        g = rows.numel()
        q = query[rows, :, 0, :].reshape(g, kv_heads, rep, dim)
        shared_k, shared_v = key[rows[0], :, :length], value[rows[0], :, :length]
        own_k, own_v = key[rows, :, length:], value[rows, :, length:]
        s1 = torch.einsum("gkrd,kpd->gkrp", q, shared_k) * scale
        s2 = torch.einsum("gkrd,gkld->gkrl", q, own_k) * scale
        s2 = s2.masked_fill(~attention_mask[rows, 0, 0, length:][:, None, None, :], float("-inf"))
        top = torch.maximum(s1.amax(-1, keepdim=True), s2.amax(-1, keepdim=True))
        e1, e2 = (s1 - top).exp(), (s2 - top).exp()
        num = torch.einsum("gkrp,kpd->gkrd", e1, shared_v) + torch.einsum("gkrl,gkld->gkrd", e2, own_v)
        out[rows] = (num / (e1.sum(-1, keepdim=True) + e2.sum(-1, keepdim=True))).reshape(g, heads, dim)
        grouped[rows] = True
    rest = (~grouped).nonzero().flatten()
    if rest.numel():
        alone, _ = sdpa_attention_forward(module, query[rest], key[rest], value[rest], attention_mask[rest],
                                          dropout=dropout, scaling=scaling, **kwargs)
        out[rest] = alone[:, 0]
    return out[:, None], None


def cache_keyword(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` from transformers 5.24 (``past_key_values`` before,
    deprecated since)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model forwards **kwargs
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _settle(future: Future, result=None, error: Exception | None = None) -> None:
    """Give ``future`` its result or error, unless it is done already (cancelled by its caller, even meanwhile)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class _RowCache:
    """What the model's attention layers see as their KV cache during one forward pass: rows ``lo:hi`` of the
    engine's cache. ``update`` writes the new keys and values at each query token's slot and returns the rows'
    caches up to ``width`` positions."""

    is_compileable = False

    def __init__(self, keys, values, lo: int, hi: int, slots, width: int):
        self.keys, self.values, self.lo, self.hi, self.slots, self.width = keys, values, lo, hi, slots, width
        import torch

        self.rows = torch.arange(hi - lo, device=slots.device)[:, None]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx][self.lo : self.hi], self.values[layer_idx][self.lo : self.hi]
        k[self.rows, :, self.slots] = key_states.transpose(1, 2)
        v[self.rows, :, self.slots] = value_states.transpose(1, 2)
        return k[:, :, : self.width], v[:, :, : self.width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width


@dataclass
class _Row:
    request: Request
    future: Future
    variant: str
    cached: int
    length: int  # tokens in the cache
    token: int = -1  # the last sampled token, not yet in the cache
    produced: list = field(default_factory=list)
    generator: object = None
    submitted: float = 0.0  # time.perf_counter() at submission
    queued: float = 0.0  # seconds waiting for a row
    first_token: float = 0.0  # seconds from submission to the first token
    logprobs: list | None = None


class Engine:
    """Serves :class:`Request` objects with one loaded causal LM, from a background thread.

    Args:
        model: a transformers causal LM (or a PEFT model around one), on its device and in eval mode.
        eos_ids: token ids that end a reply.
        pad_id: id used for padding (never attended to).
        rows: sequences decoded together at most.
        min_prefix: tokens a stored prefix must share with a request to be used.
        prefix_bytes: memory the prefix store may keep.
        max_context: positions per row (default: the model's context length).
        decode: token ids to text, for stop strings (requests with ``stop`` need it).
        lora: per-row LoRA adapters over ``model`` (:class:`genpi.serving.adapters.RowLoRA`); a request whose
            variant names one of them runs through it, and requests of different variants share batches.
            Without it, rows of one variant run at a time.
    """

    def __init__(self, model, eos_ids: set[int], pad_id: int, rows: int = 16, min_prefix: int = 32,
                 prefix_bytes: int = 2 * 2**30, max_context: int | None = None, decode=None, lora=None):
        import torch

        self.torch = torch
        self.model = model
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.max_rows = rows
        self.min_prefix = min_prefix
        self.decode = decode
        self.lora = lora
        self.store = PrefixStore(prefix_bytes)
        self.stats = EngineStats()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.layers = config.num_hidden_layers
        heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.max_context = max_context or int(getattr(config, "max_position_embeddings", None) or 4096)
        self.cache_kw = cache_keyword(model)
        self.shared_attention = getattr(config, "_attn_implementation", None) in ("sdpa", ATTENTION)
        if self.shared_attention:  # the registered function falls back to SDPA for every other call
            from transformers import AttentionInterface
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

            AttentionInterface.register(ATTENTION, shared_prefix_attention)
            # ... and calls without a mask of their own get SDPA's causal mask (without one registered, transformers
            # would pass no mask, and SDPA would take "causal" against a cache as attending to its first positions).
            ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
            config._attn_implementation = ATTENTION
        self.width = 0
        self.keys: list = []
        self.values: list = []
        self.active: list[_Row] = []
        self.queue: queue.Queue = queue.Queue()
        self.waiting: list = []  # taken from the queue, not yet in a row
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="genpi-engine")
        self._thread.start()

    # --- public

    def submit(self, request: Request, variant: str = "") -> Future:
        """Queue ``request``; the future's result is its :class:`Completion`. ``variant`` names the model state
        (e.g. the active adapter): prefixes are stored per variant, and rows of one variant run at a time."""
        future: Future = Future()
        if len(request.ids) + 1 > self.max_context:
            future.set_exception(ValueError(f"the prompt has {len(request.ids)} tokens: more than the "
                                            f"{self.max_context} positions this engine holds per request"))
            return future
        if request.max_new_tokens < 1:
            future.set_exception(ValueError("max_new_tokens must be at least 1"))
            return future
        if request.stop and self.decode is None:
            future.set_exception(ValueError("stop strings need an engine made with decode="))
            return future
        self.queue.put((request, future, variant, time.perf_counter()))
        return future

    def load(self) -> tuple[int, int]:
        """Requests decoding now and requests waiting for a row (a server refuses work past a bound on these)."""
        return len(self.active), len(self.waiting) + self.queue.qsize()

    def pin_prefix(self, variant: str, ids: list[int], keys: list, values: list) -> None:
        """Make ``keys``/``values`` (per layer ``(1, kv_heads, len(ids), head_dim)``) the KV of ``ids`` for every
        request of ``variant``: never evicted, never computed. A soft prompt is served this way, its virtual
        tokens standing as ``ids`` (placeholders no request of another variant shares). Call it before submitting
        requests of ``variant``."""
        keys = [k.to(self.device, self.dtype) for k in keys]
        values = [v.to(self.device, self.dtype) for v in values]
        nbytes = sum(k.numel() * k.element_size() * 2 for k in keys)
        self.store.pin(variant, _Entry(tuple(ids), keys, values, nbytes))

    def generate(self, requests: list[Request], variant: str = "") -> list[Completion]:
        """Completions for ``requests``, in order (blocking)."""
        futures = [self.submit(r, variant) for r in requests]
        return [f.result() for f in futures]

    # --- the loop

    def _loop(self) -> None:
        while True:
            if not self.active and not self.waiting:
                self.waiting.append(self.queue.get())
                time.sleep(0.002)  # requests sent together arrive within a few milliseconds
            while True:
                try:
                    self.waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._drop_cancelled()
            started = time.perf_counter()
            self.waiting = self._admit(self.waiting)
            self.stats.prefill_seconds += time.perf_counter() - started
            if not self.active:
                continue
            started = time.perf_counter()
            try:
                self._step()
            except Exception as e:  # a failed step fails its requests, not the engine
                self._fail(self.active, e)
            self.stats.decode_seconds += time.perf_counter() - started

    def _admit(self, waiting: list) -> list:
        """Move waiting requests of the running variant into free rows; return those still waiting."""
        free = self.max_rows - len(self.active)
        if free <= 0 or not waiting:
            return waiting
        if self.lora is None:  # one model state at a time: rows of the running variant only
            variant = self.active[0].variant if self.active else waiting[0][2]
            take = [w for w in waiting if w[2] == variant][:free]
        else:  # every row through its own adapter: first come, first served
            take = waiting[:free]
        rest = [w for w in waiting if not any(w is t for t in take)]
        by_variant: dict[str, list] = {}
        for w in take:
            by_variant.setdefault(w[2], []).append(w)
        for variant, items in by_variant.items():
            before = len(self.active)
            try:
                self._prefill(items, variant)
            except Exception as e:  # the new requests fail; the rows already decoding go on
                del self.active[before:]
                for _, future, _, _ in items:
                    _settle(future, error=e)
        return rest

    def _rows(self, variants: list[str]):
        """Within the block, each row of a forward pass runs through its variant's adapter (with ``lora``)."""
        return nullcontext() if self.lora is None else self.lora.rows(variants)

    def _drop_cancelled(self) -> None:
        """Forget waiting requests and free the rows of running ones whose future was cancelled."""
        kept = [w for w in self.waiting if not w[1].cancelled()]
        self.stats.cancelled += len(self.waiting) - len(kept)
        self.waiting = kept
        for row in [row for row in self.active if row.future.cancelled()]:
            self._remove(row)
            self.stats.cancelled += 1

    def _fail(self, rows: list, error: Exception) -> None:
        for row in rows:
            _settle(row.future, error=error)
        self.active = []

    # --- prefixes

    def _learn_shared_prefix(self, requests: list[Request], variant: str) -> None:
        """Store the longest prefix that requests arriving together share, so that it is computed once."""
        m = self.min_prefix
        heads: dict[tuple, list[Request]] = {}
        for r in requests:
            if len(r.ids) > m:
                heads.setdefault(tuple(r.ids[:m]), []).append(r)
        for group in heads.values():
            if len(group) < 2:
                continue
            n = min(len(r.ids) for r in group) - 1
            for r in group[1:]:
                n = min(n, common_prefix(group[0].ids, r.ids))
            _, have = self.store.best(variant, group[0].ids, n)
            if n >= m and have < n:
                self._compute_prefix(variant, group[0].ids[:n])

    def _compute_prefix(self, variant: str, ids: list[int]) -> _Entry:
        """The KV of ``ids`` (starting from the longest stored prefix of it), stored and returned."""
        torch = self.torch
        from transformers import DynamicCache

        base, start = self.store.best(variant, ids, len(ids))
        cache = DynamicCache()
        if base is not None and start:
            for i in range(self.layers):
                cache.update(base.keys[i][:, :, :start], base.values[i][:, :, :start], i)
        with torch.inference_mode(), self._rows([variant]):
            self.model(input_ids=torch.tensor([ids[start:]], device=self.device), use_cache=True, logits_to_keep=1,
                       position_ids=torch.arange(start, len(ids), device=self.device)[None], **{self.cache_kw: cache})
        layers = cache.layers
        entry = _Entry(tuple(ids), [l.keys for l in layers], [l.values for l in layers], 0)
        entry.nbytes = sum(k.numel() * k.element_size() * 2 for k in entry.keys)
        self.stats.prefill_tokens += len(ids) - start
        self.store.put(variant, entry)
        return entry

    # --- rows

    def _ensure(self, rows: int, width: int) -> None:
        """Cache tensors of at least ``rows`` rows and ``width`` positions (grown by doubling, contents kept)."""
        torch = self.torch
        if self.keys and self.keys[0].shape[0] >= rows and self.width >= width:
            return
        new_rows = max(rows, self.keys[0].shape[0] if self.keys else 0, self.max_rows)
        new_width = min(self.max_context, max(width, 2 * self.width, 256))
        shape = (new_rows, self.kv_heads, new_width, self.head_dim)
        for store in (self.keys, self.values):
            grown = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
            for i, old in enumerate(store):
                grown[i][: old.shape[0], :, : old.shape[2]] = old
            store[:] = grown
        self.width = new_width

    def _generator(self, r: Request):
        if r.temperature <= 0:
            return None
        g = self.torch.Generator(device=self.device)
        if r.seed is None:
            g.seed()
        else:
            g.manual_seed(int(r.seed))
        return g

    def _prefill(self, items: list, variant: str) -> None:
        """Put new requests into rows: copy each one's stored prefix, compute the rest of its prompt (together,
        left-padded), and sample its first token."""
        torch = self.torch
        if not items:
            return
        requests = [r for r, _, _, _ in items]
        self._learn_shared_prefix(requests, variant)
        lo = len(self.active)
        rows: list[_Row] = []
        pinned = self.store.pinned.get(variant, 0)
        now = time.perf_counter()
        for r, fut, v, submitted in items:
            entry, cached = self.store.best(variant, r.ids, len(r.ids) - 1)
            if cached < pinned:
                raise ValueError(f"a request of {variant!r} does not start with its pinned prefix")
            if cached < self.min_prefix and not pinned:
                entry, cached = None, 0
            rows.append(_Row(r, fut, v, cached, cached, generator=self._generator(r), submitted=submitted,
                             queued=now - submitted, logprobs=None if r.logprobs is None else []))
        hi = lo + len(rows)
        self._ensure(hi, max(len(r.ids) for r in requests) + 1)
        for i, row in enumerate(rows):
            if row.cached:
                entry, _ = self.store.best(variant, row.request.ids, row.cached)
                for layer in range(self.layers):
                    self.keys[layer][lo + i, :, : row.cached] = entry.keys[layer][0, :, : row.cached]
                    self.values[layer][lo + i, :, : row.cached] = entry.values[layer][0, :, : row.cached]
        suffixes = [row.request.ids[row.cached :] for row in rows]
        s = max(len(x) for x in suffixes)
        n = len(rows)
        width = max(len(row.request.ids) for row in rows)
        ids = torch.full((n, s), self.pad_id, dtype=torch.long, device=self.device)
        slots = torch.full((n, s), self.width - 1, dtype=torch.long, device=self.device)  # pads write a scratch slot
        mask = torch.zeros((n, 1, s, width), dtype=torch.bool, device=self.device)
        for i, (row, x) in enumerate(zip(rows, suffixes)):
            pad = s - len(x)
            ids[i, pad:] = torch.tensor(x, device=self.device)
            positions = torch.arange(row.cached, row.cached + len(x), device=self.device)
            slots[i, pad:] = positions
            # query j of the real suffix sees its row's positions up to its own; pads see position 0 only
            mask[i, 0, pad:, :] = torch.arange(width, device=self.device)[None, :] <= positions[:, None]
            mask[i, 0, :pad, 0] = True
        position_ids = torch.where(slots == self.width - 1, torch.zeros_like(slots), slots)
        cache = _RowCache(self.keys, self.values, lo, hi, slots, width)
        with torch.inference_mode(), self._rows([variant] * n):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                use_cache=True, logits_to_keep=1, **{self.cache_kw: cache}).logits[:, -1].float()
        self.stats.prefill_tokens += sum(len(x) for x in suffixes)
        for i, row in enumerate(rows):
            row.length = len(row.request.ids)
            if row.length - row.cached >= self.min_prefix:  # much was computed: the next request may share it
                self._keep(lo + i, row.request.ids, variant)
            self.stats.requests += 1
            self.stats.prompt_tokens += len(row.request.ids)
            self.stats.cached_tokens += row.cached
        self.active += rows
        self._take(logits, lo)

    def _step(self) -> None:
        """Decode one token for every active row."""
        torch = self.torch
        n = len(self.active)
        need = max(row.length for row in self.active) + 1
        self._ensure(n, need)
        lengths = torch.tensor([row.length for row in self.active], device=self.device)
        ids = torch.tensor([[row.token] for row in self.active], device=self.device)
        mask = (torch.arange(need, device=self.device)[None, :] <= lengths[:, None])[:, None, None, :]
        cache = _RowCache(self.keys, self.values, 0, n, lengths[:, None], need)
        extra = {"genpi_groups": self._groups()} if self.shared_attention else {}
        with torch.inference_mode(), self._rows([row.variant for row in self.active]):
            extra[self.cache_kw] = cache
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=lengths[:, None], use_cache=True,
                                logits_to_keep=1, **extra).logits[:, -1].float()
        for row in self.active:
            row.length += 1
        self.stats.steps += 1
        self._take(logits, 0)

    def _groups(self) -> list:
        """Active rows of one variant that share a prompt prefix of at least ``min_prefix`` tokens, as
        ``(rows, length)`` (the same tokens through different adapters have different keys and values)."""
        torch = self.torch
        by_head: dict[tuple, list[int]] = {}
        for i, row in enumerate(self.active):
            if len(row.request.ids) > self.min_prefix:
                by_head.setdefault((row.variant, *row.request.ids[: self.min_prefix]), []).append(i)
        groups = []
        for members in by_head.values():
            if len(members) < 2:
                continue
            first = self.active[members[0]].request.ids
            length = min(len(self.active[i].request.ids) for i in members)
            for i in members[1:]:
                length = min(length, common_prefix(first, self.active[i].request.ids))
            groups.append((torch.tensor(members, device=self.device), length))
        return groups

    def _take(self, logits, lo: int) -> None:
        """Sample the next token of rows ``lo:`` from ``logits``; finish rows that stop, and compact the rows."""
        rows = self.active[lo:]
        tokens = self._pick(logits, rows)
        infos = self._logprobs(logits, tokens, rows)
        finished = []
        now = time.perf_counter()
        for row, tok, info in zip(rows, tokens.tolist(), infos):
            if not row.produced:
                row.first_token = now - row.submitted
            if tok in self.eos_ids:
                finished.append((row, "stop"))
                continue
            row.produced.append(tok)
            row.token = tok
            if info is not None:
                row.logprobs.append(info)
            if row.request.on_token is not None:
                try:
                    row.request.on_token(tok, info)
                except Exception:  # noqa: BLE001 - a failing listener ends its own request, not the batch
                    row.future.cancel()
            if row.request.stop and self._stopped(row):
                finished.append((row, "stop"))
            elif len(row.produced) >= row.request.max_new_tokens or row.length + 1 >= self.max_context:
                finished.append((row, "length"))
        for row, reason in finished:
            self._finish(row, reason)

    def _logprobs(self, logits, tokens, rows: list[_Row]) -> list:
        """Each row's :class:`TokenLogprob` for its sampled token, or None where the request did not ask."""
        torch = self.torch
        asked = [i for i, row in enumerate(rows) if row.request.logprobs is not None]
        out: list = [None] * len(rows)
        if not asked:
            return out
        index = torch.tensor(asked, device=logits.device)
        logp = torch.log_softmax(logits[index], dim=-1)
        chosen = logp.gather(1, tokens[index][:, None])[:, 0].tolist()
        k = max(rows[i].request.logprobs for i in asked)
        top = logp.topk(k, dim=-1) if k else None
        for j, i in enumerate(asked):
            n = rows[i].request.logprobs
            pairs = list(zip(top.indices[j, :n].tolist(), top.values[j, :n].tolist())) if n else []
            out[i] = TokenLogprob(chosen[j], pairs)
        return out

    def _finish(self, row: _Row, reason: str) -> None:
        """Hand the reply back and keep the row's sequence in the prefix store."""
        length = row.length  # tokens in the cache: the prompt and the reply but its last token
        if length >= self.min_prefix:  # a dialogue's next turn starts with this one
            self._keep(self.active.index(row), (row.request.ids + row.produced)[:length], row.variant)
        self._remove(row)
        self.stats.generated_tokens += len(row.produced)
        _settle(row.future, Completion(row.produced, reason, len(row.request.ids), row.cached, row.logprobs,
                                       row.queued, row.first_token))

    def _remove(self, row: _Row) -> None:
        """Take ``row`` out of the rows and close the gap."""
        i = self.active.index(row)
        last = len(self.active) - 1
        if i != last:  # the last row moves into the gap: active rows stay 0..n-1
            moved = self.active[last]
            for store in (self.keys, self.values):
                for t in store:
                    t[i, :, : moved.length] = t[last, :, : moved.length]
            self.active[i] = moved
        self.active.pop()

    def _stopped(self, row: _Row) -> bool:
        """Whether the reply's text now contains a stop string (only its last tokens are decoded: a token is at
        least one character, so a stop string of ``n`` characters lies within the last ``n + 1`` tokens)."""
        window = max(len(s) for s in row.request.stop) + 1
        tail = self.decode(row.produced[-window:])
        return any(s in tail for s in row.request.stop)

    def _keep(self, row: int, ids: list[int], variant: str) -> None:
        """Copy row ``row``'s cache of ``ids`` into the prefix store."""
        n = len(ids)
        keys = [k[row : row + 1, :, :n].clone() for k in self.keys]
        values = [v[row : row + 1, :, :n].clone() for v in self.values]
        self.store.put(variant, _Entry(tuple(ids), keys, values, sum(k.numel() * k.element_size() * 2 for k in keys)))

    def _pick(self, logits, rows: list[_Row]):
        torch = self.torch
        tokens = logits.argmax(-1)
        for i, row in enumerate(rows):
            r = row.request
            if row.generator is None:
                continue
            probs = torch.softmax(logits[i] / r.temperature, dim=-1)
            if r.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                sorted_p[sorted_p.cumsum(0) - sorted_p >= r.top_p] = 0.0  # keep the smallest set reaching top_p
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return tokens
