"""`genpi serve` under concurrent load: K agents served as their prompts (prefix cached) or as their adapters
(per-row LoRA over one base), and, for K = 1, as a merged model; N concurrent streaming clients, one run.

    python benchmarks/serve_load.py                                   # K 1, 4; N 1, 4, 16 (a few minutes on 2 cores)
    python benchmarks/serve_load.py --agents 1 4 16 --clients 1 4 16 32 --requests-per-client 4

Agent ``i``'s prompt is ``examples/support_agent.txt`` headed by its own line (so no two prompts share a prefix)
and its adapter a LoRA of ``genpi train``'s default shape (rank, alpha, targets), untrained: serving cost depends
on the adapter's shape, not its values (benchmarks/inference_cost.py does the same). Every arm runs on one server
process started here on a loopback port (the merged arm on a second one, ``--merge``); each agent gets one warm-up
request first. Clients are ``openai.AsyncOpenAI`` with ``stream=True`` and ``stream_options.include_usage``:
TTFT is the time to the first content chunk, latency to the last; each client sends its requests one after the
other, to agents in turn. Reported per level: requests/s, generated tokens/s, p50/p99 TTFT and latency, the
server's peak resident memory during the level, and the prefix-cache hit rate (cached / prompt tokens); then
ratios adapter / prompted at each (K, N), beside two limits: from FLOPs per request (the prompt's attention and
prefill removed, the LoRA matmuls added) and from the bytes one decoding step reads (base weights once; each
distinct prompt's cached keys and values once, as shared-prefix attention reads them, against each distinct
adapter's matrices once), the bound on a CPU; and a PNG chart of throughput and p99 latency against N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

QUESTIONS = ["My parcel has not arrived after two weeks, what can I do?", "I was charged twice for one order.",
             "How do I change the address of an order I placed yesterday?", "The product arrived broken.",
             "Can I return shoes I have worn once?", "Your app logs me out every few minutes."]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def peak_rss(pid: int, stop: threading.Event, out: list) -> None:
    """The largest resident set of ``pid`` seen, sampled every 0.1 s until ``stop``."""
    peak = 0
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            break
        stop.wait(0.1)
    out.append(peak)


async def level(base_url: str, models: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    results = []

    async def one(c: int) -> None:
        for j in range(per_client):
            k = c * per_client + j
            start = time.perf_counter()
            first, usage = None, None
            stream = await client.chat.completions.create(
                model=models[k % len(models)], max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}])
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    usage = chunk.usage
            results.append((first or time.perf_counter() - start, time.perf_counter() - start, usage))

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    ttft, lat = [r[0] for r in results], [r[1] for r in results]
    out_tokens = sum(r[2].completion_tokens for r in results)
    prompt = sum(r[2].prompt_tokens for r in results)
    cached = sum(r[2].prompt_tokens_details.cached_tokens for r in results)
    return {"requests": len(results), "rps": len(results) / wall, "tps": out_tokens / wall,
            "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
            "lat_p50": percentile(lat, 0.5), "lat_p99": percentile(lat, 0.99),
            "hit": cached / prompt if prompt else 0.0, "prompt_tokens": prompt / len(results),
            "out_tokens": out_tokens / len(results)}


def run_level(server, models, clients, per_client, max_tokens) -> dict:
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=peak_rss, args=(server.process.pid, stop, peak), daemon=True)
    sampler.start()
    try:
        row = asyncio.run(level(server.base_url, models, clients, per_client, max_tokens))
    finally:
        stop.set()
        sampler.join()
    row["peak_mb"] = peak[0] / 2**20 if peak else float("nan")
    return row


def progress(row: dict) -> None:
    """The load level's line, printed as it completes."""
    print(f"K={row['K']:>2} N={row['N']:>2} {row['arm']:<8} {row['rps']:6.2f} req/s {row['tps']:7.1f} tok/s  TTFT p50 "
          f"{row['ttft_p50']:.2f} p99 {row['ttft_p99']:.2f} s  latency p50 {row['lat_p50']:.2f} p99 "
          f"{row['lat_p99']:.2f} s  peak {row['peak_mb']:.0f} MB  cache hit {row['hit']:.0%}", flush=True)


def flops_limit(config, prompt_tokens: float, user_tokens: float, out_tokens: float, lora_params: int) -> float:
    """Ideal throughput ratio adapter / prompted-with-cached-prefix, from FLOPs per request: both pay 2 * params
    per computed token; the prompted arm's decoding also attends over the prompt (4 * layers * hidden per token of
    context), the adapter arm pays 2 * LoRA params per token and prefills its (short) prompt whole."""
    layers, hidden = config.num_hidden_layers, config.hidden_size
    params = 2 * 134.5e6  # SmolLM2-135M, forward FLOPs per token

    def attention(context: float) -> float:
        return 4 * layers * hidden * context

    decode_ctx = lambda p: sum(p + i for i in range(int(out_tokens)))  # noqa: E731
    prompted = params * (user_tokens + out_tokens) + attention(1) * decode_ctx(prompt_tokens)
    adapter = (params + 2 * lora_params) * (user_tokens + out_tokens) + attention(1) * decode_ctx(user_tokens)
    return prompted / adapter


def bytes_limit(config, weight_bytes: int, adapter_bytes: int, prompt_tokens: float, user_tokens: float,
                out_tokens: float, agents: int, rows: int, arm: str = "adapter") -> float:
    """Ideal throughput ratio ``arm`` / prompted-with-cached-prefix from the bytes one decoding step reads, the
    bound of decoding on a CPU: both read the base weights once per step for all rows; the prompted arm reads each
    distinct prompt's cached keys and values once for the rows that share it (the engine's shared-prefix
    attention), the adapter arm each distinct adapter's matrices once; every row reads its own later positions.
    ``rows`` is the rows decoding at once, ``agents`` the distinct agents among them."""
    kv_token = config.num_hidden_layers * 2 * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 4  # fp32 keys and values of one position
    present = min(agents, rows)
    own = rows * (user_tokens + out_tokens / 2) * kv_token
    prompted = weight_bytes + present * (prompt_tokens - user_tokens) * kv_token + own
    other = weight_bytes + own + (present * adapter_bytes if arm == "adapter" else 0)
    return prompted / other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 4], help="K: distinct agents (default: 1 4)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="N: concurrent clients (default: 1 4 16)")
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends (default: 2)")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per reply at most (default: 16)")
    ap.add_argument("--rows", type=int, default=16, help="the server's --rows (default: 16)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default: 1)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "serve_load.json")
    ap.add_argument("--chart", type=Path, default=ROOT / "docs" / "results" / "serve_load.png")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    from inference_cost import fresh_adapter

    from genpi.models import default_model_dir, load_model, load_tokenizer
    from genpi.serving.local import LocalServer

    k_max = max(args.agents)
    work = Path(tempfile.mkdtemp(prefix="genpi-serve-load-"))
    text = (ROOT / "examples" / "support_agent.txt").read_text()
    adapter = fresh_adapter(work / "adapter", "")
    flags = ["--rows", str(args.rows), "--max-waiting", "1024", "--threads", str(args.threads)]
    for i in range(k_max):
        (work / f"p{i}.txt").write_text(f"You are support agent number {i} of the shop.\n\n{text}")
        flags += ["--prompt", f"p{i}={work / f'p{i}.txt'}", "--adapter", f"a{i}={adapter}"]
    tok = load_tokenizer("default")

    def length(messages) -> int:
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    prompt_tokens = length([{"role": "system", "content": text}, {"role": "user", "content": QUESTIONS[0]}])
    user_tokens = length([{"role": "user", "content": QUESTIONS[0]}])
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        lora_params = sum(f.get_slice(n).get_shape()[0] * f.get_slice(n).get_shape()[1] for n in f.keys())
    base = load_model("default")
    config = base.config
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())  # a tied embedding once
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    del base
    model_dir = str(default_model_dir())
    print(f"$ python benchmarks/serve_load.py {shlex.join(sys.argv[1:])}", flush=True)
    rows = []
    with LocalServer(model_dir, log_path=work / "server.log", flags=flags, startup_timeout=600) as server:
        for k in args.agents:
            for arm, prefix in (("prompted", "p"), ("adapter", "a")):
                models = [f"{prefix}{i}" for i in range(k)]
                run_level(server, models, len(models), 1, args.max_tokens)  # warm-up: one request per agent
                for n in args.clients:
                    row = {"K": k, "N": n, "arm": arm, **run_level(server, models, n, args.requests_per_client,
                                                                      args.max_tokens)}
                    rows.append(row)
                    progress(row)
    if 1 in args.agents:
        with LocalServer(model_dir, log_path=work / "merged.log", startup_timeout=600,
                         flags=[*flags[:6], "--merge", "--adapter", f"m={adapter}"]) as server:
            run_level(server, ["m"], 1, 1, args.max_tokens)
            for n in args.clients:
                row = {"K": 1, "N": n, "arm": "merged", **run_level(server, ["m"], n, args.requests_per_client,
                                                                   args.max_tokens)}
                rows.append(row)
                progress(row)

    by = {(r["K"], r["N"], r["arm"]): r for r in rows}
    out_tokens = sum(r["out_tokens"] for r in rows) / len(rows)
    limit = flops_limit(config, prompt_tokens, user_tokens, out_tokens, lora_params)
    print(f"\nratios adapter / prompted (throughput: higher is better; p99 latency: lower is better); "
          f"FLOPs limit {limit:.2f}x ({prompt_tokens} prompt tokens, {user_tokens} without, {out_tokens:.1f} out); "
          f"bytes limit per level (weights {weight_bytes / 2**20:.0f} MB, adapter {adapter_bytes / 2**20:.1f} MB)")
    print("| K | N | tok/s adapter / prompted | bytes limit | of it | of the FLOPs limit | p99 latency adapter / prompted "
          "| merged / prompted tok/s (K=1) | merged bytes limit |")
    print("|---|---|---|---|---|---|---|---|---|")
    limits = {}
    for k in args.agents:
        for n in args.clients:
            a, p, m = by[(k, n, "adapter")], by[(k, n, "prompted")], by.get((k, n, "merged"))
            ratio = a["tps"] / p["tps"]
            shape = (config, weight_bytes, adapter_bytes, prompt_tokens, user_tokens, out_tokens, k, min(n, args.rows))
            limits[f"{k},{n}"] = bound = bytes_limit(*shape)
            merged = f"{m['tps'] / p['tps']:.2f}x | {bytes_limit(*shape, arm='merged'):.2f}x" if m else " | "
            print(f"| {k} | {n} | {ratio:.2f}x | {bound:.2f}x | {ratio / bound:.0%} | {ratio / limit:.0%} | "
                  f"{a['lat_p99'] / p['lat_p99']:.2f}x | {merged} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": sys.argv[1:], "flops_limit": limit, "bytes_limit": limits,
                                    "weight_bytes": weight_bytes, "adapter_bytes": adapter_bytes, "rows": rows}, indent=1))
    chart(rows, args.agents, args.chart)
    print(f"\nwrote {args.json} and {args.chart}")


def chart(rows: list[dict], agents: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for k in agents:
        for arm, style in (("prompted", "o--"), ("adapter", "s-"), ("merged", "^:")):
            pts = sorted((r["N"], r["tps"], r["lat_p99"]) for r in rows if r["K"] == k and r["arm"] == arm)
            if pts:
                left.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"K={k} {arm}")
                right.plot([p[0] for p in pts], [p[2] for p in pts], style, label=f"K={k} {arm}")
    for ax, title in ((left, "throughput (generated tokens/s)"), (right, "p99 latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
