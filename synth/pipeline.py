"""The synthesis run: inputs, single-turn AS-IS/TO-BE, reasons and role-swapped dialogues, resumably.

Each record is produced by one worker (AS-IS, then the dialogue whose first agent turn is the TO-BE answer,
then the reason), several workers in flight at once; a finished record is appended to ``records.jsonl`` at
once. Rerunning the same command skips every finished id.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genpi import __version__
from genpi.config import SynthConfig
from genpi.errors import UserError
from genpi.prompt import AgentPrompt, load_prompt
from genpi.synth import roles
from genpi.synth.client import ChatClient, ChatResult, OpenAIChatClient, public_url
from genpi.synth.dedup import Deduplicator
from genpi.synth.store import RunStore, stable_id


@dataclass
class Usage:
    """Token and call counts of one run, shared by the workers."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, r: ChatResult) -> None:
        self.calls += 1
        self.prompt_tokens += r.prompt_tokens
        self.completion_tokens += r.completion_tokens


@dataclass
class Roles:
    """Which served model plays which role."""

    agent: str
    env: str
    synth: str


@dataclass
class Synthesizer:
    """Runs the four steps for one prompt against one chat client."""

    prompt: AgentPrompt
    config: SynthConfig
    client: ChatClient
    models: Roles
    usage: Usage = field(default_factory=Usage)
    stopped: threading.Event = field(default_factory=threading.Event)  # set on Ctrl-C: workers make no new calls

    def _seed(self, *parts) -> int:
        return int(stable_id(self.config.seed, *parts), 16) % (2**31)

    def _chat(self, messages, model, *parts) -> ChatResult:
        c = self.config
        if self.stopped.is_set():
            raise InterruptedError("the run was interrupted")
        r = self.client.chat(messages, model=model, temperature=c.temperature, max_tokens=c.max_tokens, seed=self._seed(*parts))
        self.usage.add(r)
        return r

    # --- step 1: inputs

    def propose_inputs(self, call: int, examples: list[str]) -> tuple[str, list[str], str]:
        """``(raw output, candidate inputs, error)``: a failed call is kept with its error, like a failed record."""
        messages = roles.inputs_messages(self.prompt, self.config.inputs_per_call, examples)
        try:
            raw = self._chat(messages, self.models.synth, "inputs", call).text
        except UserError:
            raise
        except Exception as e:
            return "", [], f"{type(e).__name__}: {e}"
        return raw, roles.parse_inputs(raw), ""

    # --- steps 2-4: one record

    def record(self, index: int, record_id: str, user_input: str) -> dict:
        """AS-IS, role-swapped dialogue (its first agent turn is TO-BE) and reason for one input."""
        rec = {"id": record_id, "index": index, "input": user_input, "as_is": "", "to_be": "", "reason": "",
               "dialogue": [{"role": "user", "content": user_input}], "finish": "error",
               "meta": {"error": "", "env_raw": [], "finish_reasons": []}}
        try:
            rec["as_is"] = self._chat(roles.as_is_messages(user_input), self.models.agent, record_id, "as_is").text
            rec["finish"] = self._dialogue(rec)
            rec["to_be"] = rec["dialogue"][1]["content"]
            messages = roles.reason_messages(self.prompt, user_input, rec["as_is"], rec["to_be"])
            rec["reason"] = self._chat(messages, self.models.synth, record_id, "reason").text
        except UserError:
            raise
        except Exception as e:  # kept with the record and counted, never silently dropped
            rec["finish"] = "error"
            rec["meta"]["error"] = f"{type(e).__name__}: {e}"
        return rec

    def _dialogue(self, rec: dict) -> str:
        dialogue, meta, c = rec["dialogue"], rec["meta"], self.config
        for turn in range(c.max_turns):
            r = self._chat(roles.agent_messages(self.prompt, dialogue), self.models.agent, rec["id"], "agent", turn)
            dialogue.append({"role": "assistant", "content": r.text})
            meta["finish_reasons"].append(r.finish_reason)
            if c.end_marker in r.text:
                return "end"
            if turn == c.max_turns - 1:
                return "max_turns"
            env = roles.environment_messages(self.prompt, dialogue, c.end_marker)
            raw = self._chat(env, self.models.env, rec["id"], "env", turn).text
            meta["env_raw"].append(raw)
            reply = raw.replace(c.end_marker, "").strip()
            if c.end_marker in raw or not reply:
                return "end"
            dialogue.append({"role": "user", "content": reply})
        return "max_turns"


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), transient=False)


@contextmanager
def _workers(syn: Synthesizer):
    """A thread pool that, on Ctrl-C or an error, stops at once: no new calls, no retries, no waiting.

    Calls already sent finish in the background (the embedded server is stopped right after); their records were
    not finished, so nothing finished is lost, and the rerun makes them.
    """
    pool = ThreadPoolExecutor(max_workers=syn.config.concurrency)
    try:
        yield pool
    except BaseException:
        syn.stopped.set()
        if hasattr(syn.client, "close"):
            syn.client.close()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def gather_inputs(syn: Synthesizer, store: RunStore, seeds: list[str], progress) -> list[str]:
    """Step 1, resumable: rounds of ``concurrency`` calls, deduplicated in call order, one line per call."""
    c = syn.config
    done = store.inputs()
    dedup = Deduplicator()
    for text in excluded_inputs(c.exclude_run):
        dedup.add(text)
    inputs = [row["input"] for call in done for row in call["accepted"]]
    for text in inputs:
        dedup.add(text)
    if seeds and not done:
        # Seed inputs are real user inputs: they come first, as call -1, and the synth model adds to them.
        accepted = []
        for text in seeds:
            if len(inputs) < c.num_inputs and dedup.add(text):
                accepted.append({"id": stable_id(syn.prompt.hash, "input", len(inputs)), "index": len(inputs), "input": text})
                inputs.append(text)
        store.append_input_call({"call": -1, "raw": "", "accepted": accepted, "rejected": []})
        done = [{"call": -1}]
    next_call = max((call["call"] for call in done), default=-1) + 1
    stale = 0
    # A small model repeats itself: give up after enough rounds that brought nothing new.
    max_calls = next_call + 4 * math.ceil(max(0, c.num_inputs - len(inputs)) / max(1, c.inputs_per_call)) + 4
    task = progress.add_task("inputs", total=c.num_inputs, completed=min(len(inputs), c.num_inputs), rate="")
    with _workers(syn) as pool:
        while len(inputs) < c.num_inputs and next_call < max_calls:
            examples = inputs[-12:]
            calls = list(range(next_call, next_call + c.concurrency))
            results = list(pool.map(lambda k: syn.propose_inputs(k, examples), calls))
            new_total = 0
            for k, (raw, candidates, error) in zip(calls, results):
                accepted, rejected = [], []
                for text in candidates:
                    if len(inputs) < c.num_inputs and dedup.add(text):
                        index = len(inputs)
                        accepted.append({"id": stable_id(syn.prompt.hash, "input", index), "index": index, "input": text})
                        inputs.append(text)
                    else:
                        rejected.append(text)
                store.append_input_call({"call": k, "raw": raw, "accepted": accepted, "rejected": rejected, "error": error})
                new_total += len(accepted)
            next_call += len(calls)
            errors = [error for _, _, error in results if error]
            if len(errors) == len(results):
                raise UserError(f"every call proposing user inputs failed ({errors[0]}); they are kept in "
                                f"{store.dir / 'inputs.jsonl'}: fix the server or --synth-model, then rerun to resume")
            stale = stale + 1 if new_total == 0 else 0
            if stale >= 3:
                break
            progress.update(task, completed=min(len(inputs), c.num_inputs))
    progress.update(task, completed=min(len(inputs), c.num_inputs))
    return inputs[: c.num_inputs]


def gather_records(syn: Synthesizer, store: RunStore, inputs: list[str], progress) -> tuple[list[dict], int]:
    """Steps 2-4, resumable: every input without a finished record gets one, ``concurrency`` in flight."""
    retried = store.retire_failed()  # failed records are made again; errors.jsonl keeps the failures
    records = store.records()
    done = {r["id"] for r in records}
    todo = [(i, stable_id(syn.prompt.hash, "record", i), x) for i, x in enumerate(inputs)]
    todo = [t for t in todo if t[1] not in done]
    label = f"records ({retried} failed before, retried)" if retried else "records"
    task = progress.add_task(label, total=len(inputs), completed=len(inputs) - len(todo), rate="")
    start, new = time.monotonic(), 0
    with _workers(syn) as pool:
        pending = {pool.submit(syn.record, *t) for t in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                rec = fut.result()
                store.append_record(rec)
                records.append(rec)
                new += 1
                rate = new / max(1e-9, time.monotonic() - start) * 60
                progress.update(task, advance=1, rate=f"{rate:.1f} rec/min")
    return records, new


def summary_table(records: list[dict], requested: int, new: int, usage: Usage, elapsed: float, retries: int):
    from rich.table import Table

    finish = Counter(r["finish"] for r in records)
    agent_turns = [sum(m["role"] == "assistant" for m in r["dialogue"]) for r in records]
    table = Table(title="genpi synth")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("records", f"{len(records)} / {requested} ({new} new)")
    for reason in ("end", "max_turns", "error"):
        table.add_row(f"finish: {reason}", str(finish.get(reason, 0)))
    table.add_row("agent turns / dialogue", f"{sum(agent_turns) / max(1, len(agent_turns)):.2f}")
    table.add_row("calls (retries)", f"{usage.calls} ({retries})")
    table.add_row("tokens in / out", f"{usage.prompt_tokens} / {usage.completion_tokens}")
    table.add_row("time", f"{elapsed:.1f} s")
    table.add_row("rate", f"{new / max(elapsed, 1e-9) * 60:.1f} records/min, {usage.completion_tokens / max(elapsed, 1e-9):.1f} tokens/s")
    return table


def dry_run(prompt: AgentPrompt, config: SynthConfig, seeds: list[str]) -> None:
    """Print the exact messages each role would be sent for one input; send nothing."""
    from rich.console import Console

    console = Console()
    sample = seeds[0] if seeds else "<a user input proposed in step 1>"
    placeholder = "<the agent's reply, relayed verbatim>"
    dialogue = [{"role": "user", "content": sample}, {"role": "assistant", "content": placeholder}]
    views = {
        "1. inputs (synth model)": roles.inputs_messages(prompt, config.inputs_per_call, seeds[:12]),
        "2a. AS-IS (agent, student view: no prompt)": roles.as_is_messages(sample),
        "2b. TO-BE / dialogue turn 1 (agent, teacher view)": roles.agent_messages(prompt, dialogue[:1]),
        "3. environment turn 1 (role swap)": roles.environment_messages(prompt, dialogue, config.end_marker),
        "4. reason (synth model)": roles.reason_messages(prompt, sample, "<AS-IS answer>", "<TO-BE answer>"),
    }
    for title, messages in views.items():
        console.rule(title)
        for m in messages:
            console.print(f"[bold]{m['role']}[/bold]:", m["content"], markup=False, highlight=False)


def excluded_inputs(run_dir: str) -> list[str]:
    """The inputs of another run, which this one must not repeat (exact or near duplicates)."""
    if not run_dir:
        return []
    store = RunStore(run_dir)
    if not store.run_file.exists():
        raise UserError(f"--exclude-run {run_dir} is not a synthesis run (no run.json): pass the --out of `genpi synth`")
    return [row["input"] for call in store.inputs() for row in call["accepted"]]


def read_seeds(path: str) -> list[str]:
    if not path:
        return []
    p = Path(path)
    if not p.is_file():
        raise UserError(f"seed inputs file {p} does not exist: pass --seed-inputs with a file of one input per line")
    try:
        return [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"seed inputs file {p} is not UTF-8 text: re-save it as UTF-8") from None


def _validate(c: SynthConfig) -> None:
    if not c.prompt:
        raise UserError("no prompt given: pass --prompt FILE")
    for name in ("num_inputs", "inputs_per_call", "max_turns", "max_tokens", "concurrency", "retries"):
        if getattr(c, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    if not c.end_marker.strip():
        raise UserError("--end-marker must not be empty")
    excluded_inputs(c.exclude_run)  # fails now, before the run directory is made, if it is not a run


def synthesize(config: SynthConfig, client: ChatClient | None = None, console=None) -> list[dict]:
    """Run (or resume) a synthesis into ``config.out`` and return its records.

    Args:
        config: the run's settings.
        client: a chat client to use instead of the one the config names (tests pass a fake).
        console: a ``rich`` console for progress and the summary (default: stdout).
    """
    from contextlib import ExitStack

    from rich.console import Console

    _validate(config)
    prompt = load_prompt(config.prompt)
    seeds = read_seeds(config.seed_inputs)
    if config.dry_run:
        dry_run(prompt, config, seeds)
        return []
    console = console or Console()
    store = RunStore(config.out)
    signature = {**config.signature(), "prompt_hash": prompt.hash, "templates": roles.templates_signature()}
    info = store.open(signature, overwrite=config.overwrite)
    if not info:  # written before anything can fail (a server that will not start), so the rerun resumes
        info = {"genpi_version": __version__, "signature": signature}
        store.write_info(info)

    with ExitStack() as stack:
        base_url = config.base_url or os.environ.get("OPENAI_BASE_URL", "")
        served, endpoint = config.model, public_url(base_url) if client is None else type(client).__name__
        if client is None and not base_url:
            from genpi.models import resolve_model
            from genpi.synth.server import LocalServer

            if {config.env_model, config.synth_model} - {"", config.model}:
                raise UserError("the embedded server serves one model: pass --base-url to use another --env-model or --synth-model")
            served = resolve_model(config.model)
            with console.status("starting the embedded server (transformers serve)"):
                server = stack.enter_context(LocalServer(served, log_path=store.dir / "server.log"))
            base_url, endpoint = server.base_url, "embedded transformers serve"
        if client is None:
            client = OpenAIChatClient(base_url=base_url, api_key=config.api_key or None, timeout=config.timeout,
                                      retries=config.retries)
        models = Roles(agent=served, env=config.env_model or served, synth=config.synth_model or served)
        syn = Synthesizer(prompt, config, client, models)
        info.update({
            "genpi_version": __version__,
            "prompt_path": str(config.prompt),
            "prompt_hash": prompt.hash,
            "prompt": {"kind": prompt.kind, "messages": list(prompt.messages), "input_prefix": prompt.input_prefix,
                       "text": prompt.text},
            "endpoint": endpoint,
            "models": asdict(models),
            "config": {**config.public(), "base_url": public_url(config.base_url) if config.base_url else ""},
            "signature": signature,
        })
        store.write_info(info)

        start = time.monotonic()
        with _progress() as progress:
            inputs = gather_inputs(syn, store, seeds, progress)
            records, new = gather_records(syn, store, inputs, progress)
        elapsed = time.monotonic() - start

    retries = getattr(client, "retry_count", 0)
    finish = Counter(r["finish"] for r in records)
    info["counts"] = {"inputs": len(inputs), "records": len(records), "finish": dict(finish)}
    runs = info.setdefault("runs", [])
    runs.append({"new_records": new, "seconds": round(elapsed, 2), "calls": syn.usage.calls, "retries": retries,
                 "prompt_tokens": syn.usage.prompt_tokens, "completion_tokens": syn.usage.completion_tokens})
    store.write_info(info)
    console.print(summary_table(records, config.num_inputs, new, syn.usage, elapsed, retries))
    if len(inputs) < config.num_inputs:
        console.print(f"[yellow]only {len(inputs)} distinct inputs after repeated calls: the synth model repeats itself; "
                      "try a higher --temperature or --seed-inputs[/yellow]")
    return records
