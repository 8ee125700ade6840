"""The synthesis run: inputs, single-turn AS-IS/TO-BE, reasons and role-swapped dialogues, resumably.

Each record is produced by one worker (AS-IS, then the dialogue whose first agent turn is the TO-BE answer,
then the reason), several workers in flight at once; a finished record is appended to ``records.jsonl`` at
once. Rerunning the same command skips every finished id.

With ``--env sandbox`` the environment side is real where it can be: a command in an agent turn (its first fenced
``bash`` block) runs in a throwaway sandbox of the dialogue's own (genpi.sandbox), and its output, in the prompt's
environment format, is the reply; a turn without a command gets the simulated reply. ``meta.env`` says, turn by
turn, which kind answered ("sandbox" or "simulated").

A dialogue ends when the task ends (an agent turn matches the end pattern, or the environment writes the end
marker), after ``max_turns`` agent turns, or before an agent turn that cannot be trained on: one cut off by
``max_new_tokens`` or empty (``truncated``, ``empty``), or one that repeats an earlier agent turn of the dialogue
(``repeat``: a loop), is dropped (kept in ``meta.dropped``) with everything after it. For a plain prompt, whose
other side plays the user, a reply that leaves the user's role (assistant talk, the agent's voice, a repeat of a
turn so far) ends it too (``off_role``, the reason in ``meta.off_role``): the echo it would start teaches nothing.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from genpi import __version__
from genpi.config import SynthConfig
from genpi.environment import find_command, reply_text
from genpi.errors import UserError
from genpi.progress import make_console, progress
from genpi.prompt import AgentPrompt, load_prompt
from genpi.synth import episodes, roles
from genpi.synth.client import ChatClient, ChatResult, OpenAIChatClient, public_url
from genpi.synth.diversity import diversity
from genpi.synth.dedup import normalize
from genpi.synth.inputs import gather_inputs, leaves_user_role, rejection_counts
from genpi.synth.store import RunInfo, RunStore, stable_id

FINISHES = ("end", "max_turns", "repeat", "off_role", "truncated", "empty", "error")


@dataclass
class Usage:
    """Token and call counts of one run, shared by the workers."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the server reused from its prefix cache (as it reports them)
    completion_tokens: int = 0

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, r: ChatResult) -> None:
        with self.lock:  # workers and side calls add from their own threads
            self.calls += 1
            self.prompt_tokens += r.prompt_tokens
            self.cached_tokens += r.cached_tokens
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

    end_pattern: str = ""  # see genpi.synth.episodes: "" lets only the environment end a dialogue
    stops: dict = field(default_factory=lambda: {"agent": [], "env": []})  # see genpi.synth.episodes.stop_strings
    side: ThreadPoolExecutor | None = None  # AS-IS and reason calls of records in flight (see `record`)
    sandbox_backend: str = ""  # with --env sandbox: the backend checked at the start of the run
    env_opener: str = ""  # how the prompt's environment replies begin (see genpi.synth.episodes.environment_openers)
    checker: Callable[[str], tuple] | None = None  # --checker, loaded: the first reply to a proposed input must pass it
    first_replies: dict = field(default_factory=dict)  # input -> the screened first reply ({text, finish_reason, regenerated})
    demonstrated: bool = False  # the prompt has demonstration episodes (else the other side plays the user)

    def closing_example(self, user_input: str) -> tuple[str, str] | None:
        """For a plain prompt's user view: the run's first other screened input and its first reply (whole and not
        empty, or the screen would have rejected the input)."""
        for text, reply in self.first_replies.items():
            if text != user_input:
                return text, reply["text"].replace(self.config.end_marker, "").strip()
        return None

    def _seed(self, *parts) -> int:
        return int(stable_id(self.config.seed, *parts), 16) % (2**31)

    def _chat(self, messages, model, temperature, *parts, stop=None, max_tokens=None, continue_final=False) -> ChatResult:
        if self.stopped.is_set():
            raise InterruptedError("the run was interrupted")
        kwargs = {"stop": stop} if stop else {}
        if continue_final:  # only then: clients written before it need not know the argument
            kwargs["continue_final"] = True
        r = self.client.chat(messages, model=model, temperature=temperature, max_tokens=max_tokens or self.config.max_new_tokens,
                             seed=self._seed(*parts), **kwargs)
        self.usage.add(r)
        if stop:  # servers that ignore `stop` leave the other side's words in the reply
            r.text = episodes.cut_at(r.text, stop)
        return r

    # --- step 1: inputs

    def propose_input(self, call: int, examples: list[str]) -> tuple[ChatResult | None, str]:
        """``(result, error)`` of one proposal by the model playing the user; a failed call keeps its error."""
        sampler = self.config.input_sampler
        magpie = sampler == "magpie" or (sampler == "both" and call % 2 == 1)
        messages = roles.open_user_turn(self.prompt) if magpie else roles.user_messages(self.prompt, examples)
        try:
            # A request is a sentence or two: a proposal that runs on is cut at 128 tokens and rejected.
            max_tokens = min(self.config.max_new_tokens, 128)
            return self._chat(messages, self.models.synth, self.config.inputs_temperature, "input", call,
                              max_tokens=max_tokens, continue_final=magpie), ""
        except UserError:
            raise
        except Exception as e:
            return None, f"{type(e).__name__}: {e}"

    def agent_turn(self, messages: list[dict], *parts) -> tuple[ChatResult, bool]:
        """``(reply, regenerated)``: the agent's turn; one cut off at ``--max-new-tokens`` is made once more with
        ``--regenerate-max-new-tokens`` (a cut-off turn is never trained on, so it would be lost)."""
        c = self.config
        r = self._chat(messages, self.models.agent, c.agent_temperature, *parts, stop=self.stops["agent"])
        if r.finish_reason != "length":
            return r, False
        budget = c.regenerate_max_new_tokens or 2 * c.max_new_tokens
        return self._chat(messages, self.models.agent, c.agent_temperature, *parts, "regenerated", stop=self.stops["agent"],
                          max_tokens=budget), True

    def screen_reply(self, text: str, call: int) -> dict:
        """The verdict on a proposed input by the prompted agent's first reply: ``{reason, reply}``, the reason ""
        when the reply is whole (not cut off after a regeneration, not empty) and passes ``--checker``."""
        try:
            r, regenerated = self.agent_turn(roles.agent_messages(self.prompt, [{"role": "user", "content": text}]),
                                             "screen", call)
        except UserError:
            raise
        except Exception as e:  # the input is not kept; the error is
            return {"reason": "reply failed", "reply": {"error": f"{type(e).__name__}: {e}"}}
        reply = {"text": r.text, "finish_reason": r.finish_reason, "regenerated": regenerated}
        if r.finish_reason == "length":
            return {"reason": "reply cut off", "reply": reply}
        if not r.text.replace(self.config.end_marker, "").strip():
            return {"reason": "reply empty", "reply": reply}
        if self.checker is not None:
            check = self.checker(r.text)
            ok, why = check.ok, check.reason
            if not ok:
                return {"reason": "reply fails the checker", "reply": {**reply, "check": why}}
        return {"reason": "", "reply": reply}

    # --- steps 2-4: one record

    def record(self, index: int, record_id: str, user_input: str) -> dict:
        """AS-IS, role-swapped dialogue (its first agent turn is TO-BE) and reason for one input.

        The AS-IS answer is made beside the dialogue's first turn, and the reason beside its later turns (each on
        the ``side`` pool): a record then takes the time of its dialogue plus at most one call, not of all its calls.
        """
        c = self.config
        rec = {"id": record_id, "index": index, "input": user_input, "as_is": "", "to_be": "", "reason": "",
               "dialogue": [{"role": "user", "content": user_input}], "finish": "error",
               "meta": {"error": "", "env_raw": [], "env": [], "finish_reasons": [], "dropped": [], "regenerated": []}}
        try:
            as_is = self._side(lambda: self._chat(roles.as_is_messages(user_input), self.models.agent,
                                                  c.agent_temperature, record_id, "as_is", max_tokens=c.as_is_max_new_tokens))
            reason = []

            def after_first_turn(to_be: str) -> None:
                rec["as_is"] = as_is.result().text
                messages = roles.reason_messages(self.prompt, user_input, rec["as_is"], to_be)
                reason.append(self._side(lambda: self._chat(messages, self.models.synth, c.reason_temperature, record_id,
                                                            "reason", max_tokens=c.reason_max_new_tokens)))

            rec["finish"] = self._dialogue(rec, after_first_turn)
            rec["as_is"] = as_is.result().text
            if len(rec["dialogue"]) > 1:
                rec["to_be"] = rec["dialogue"][1]["content"]
                rec["reason"] = reason[0].result().text
        except UserError:
            raise
        except Exception as e:  # kept with the record and counted, never silently dropped
            rec["finish"] = "error"
            rec["meta"]["error"] = f"{type(e).__name__}: {e}"
        return rec

    def _side(self, fn):
        """Run ``fn()`` on the side pool (its own thread per record at most), or inline without one."""
        if self.side is None:
            from concurrent.futures import Future

            f: Future = Future()
            try:
                f.set_result(fn())
            except Exception as e:
                f.set_exception(e)
            return f
        return self.side.submit(fn)

    def _dialogue(self, rec: dict, after_first_turn=None) -> str:
        """The role-swapped dialogue, in place; ``after_first_turn(text)`` is called once the TO-BE turn is kept."""
        with ExitStack() as stack:
            open_sandbox = None
            if self.config.env == "sandbox":
                from genpi.sandbox import Limits, Sandbox

                limits = Limits(seconds=self.config.action_timeout)  # started at the first command: many dialogues run none
                open_sandbox = lambda: stack.enter_context(Sandbox(limits, backend=self.sandbox_backend))
            return self._turns(rec, after_first_turn, open_sandbox)

    def _turns(self, rec: dict, after_first_turn, open_sandbox) -> str:
        dialogue, meta, c = rec["dialogue"], rec["meta"], self.config
        box = None
        for turn in range(c.max_turns):
            screened = self.first_replies.get(rec["input"]) if turn == 0 else None
            if screened:  # the reply the input was screened by: the same messages, made once
                r, regenerated = ChatResult(screened["text"], finish_reason=screened["finish_reason"]), screened["regenerated"]
            else:
                r, regenerated = self.agent_turn(roles.agent_messages(self.prompt, dialogue), rec["id"], "agent", turn)
            meta["finish_reasons"].append(r.finish_reason)
            if regenerated:
                meta["regenerated"].append(turn)
            marked = c.end_marker in r.text
            text = r.text.replace(c.end_marker, "").strip() if marked else r.text  # markers never reach training
            if r.finish_reason == "length" or not text.strip():
                # A cut-off turn would teach the student to stop mid-action, an empty one to say nothing.
                reason = "truncated" if r.finish_reason == "length" else "empty"
                meta["dropped"].append({"turn": turn, "reason": reason, "text": r.text})
                return reason
            if any(normalize(text) == normalize(m["content"]) for m in dialogue[1::2]):
                # The agent writes a turn of its own again: a loop, which would teach the student to loop.
                meta["dropped"].append({"turn": turn, "reason": "repeat", "text": r.text})
                return "repeat"
            dialogue.append({"role": "assistant", "content": text})
            if turn == 0 and after_first_turn:
                after_first_turn(text)
            if marked or episodes.ends_task(text, self.end_pattern):
                return "end"
            if turn == c.max_turns - 1:
                return "max_turns"
            command = find_command(text) if open_sandbox else None
            if command is not None:
                box = box or open_sandbox()
                action = box.run(command)
                meta["env_raw"].append(action.text())
                meta["env"].append("sandbox")
                dialogue.append({"role": "user", "content": reply_text(action, self.env_opener, c.env_output_chars)})
                continue
            plays_user = not self.demonstrated
            env = roles.environment_messages(self.prompt, dialogue, c.end_marker,
                                             self.closing_example(rec["input"]) if plays_user else None)
            raw = self._chat(env, self.models.env, c.env_temperature, rec["id"], "env", turn, stop=self.stops["env"]).text
            meta["env_raw"].append(raw)
            meta["env"].append("simulated")
            reply = raw.replace(c.end_marker, "").strip()
            if c.end_marker in raw or not reply:
                return "end"
            slip = leaves_user_role(reply, dialogue) if plays_user else ""
            if slip:  # the dialogue so far is kept; the slipped reply only in meta.env_raw
                meta["off_role"] = {"turn": turn, "reason": slip}
                return "off_role"
            dialogue.append({"role": "user", "content": reply})
        return "max_turns"


@contextmanager
def workers(syn: Synthesizer):
    """A thread pool that, on Ctrl-C or an error, stops at once: no new calls, no retries, no waiting.

    Calls already sent finish in the background (the embedded server is stopped right after); their records were
    not finished, so nothing finished is lost, and the rerun makes them.
    """
    pool = ThreadPoolExecutor(max_workers=syn.config.concurrency)
    syn.side = ThreadPoolExecutor(max_workers=syn.config.concurrency)  # one side call per record at a time
    try:
        yield pool
    except BaseException:
        syn.stopped.set()
        if hasattr(syn.client, "close"):
            syn.client.close()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        syn.side.shutdown(wait=False, cancel_futures=True)
        syn.side = None


def gather_records(syn: Synthesizer, store: RunStore, inputs: list[str], pool, bars) -> tuple[list[dict], int]:
    """Steps 2-4, resumable: every input without a finished record gets one, ``concurrency`` in flight."""
    retried = store.retire_failed()  # failed records are made again; errors.jsonl keeps the failures
    records = store.records()
    done = {r["id"] for r in records}
    todo = [(i, stable_id(syn.prompt.hash, "record", i), x) for i, x in enumerate(inputs)]
    todo = [t for t in todo if t[1] not in done]
    label = f"records ({retried} failed before, retried)" if retried else "records"
    task = bars.add_task(label, total=len(inputs), completed=len(inputs) - len(todo), rate="")
    start, new = time.monotonic(), 0
    pending = {pool.submit(syn.record, *t) for t in todo}
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            rec = fut.result()
            store.append_record(rec)
            records.append(rec)
            new += 1
            rate = new / max(1e-9, time.monotonic() - start) * 60
            bars.update(task, advance=1, rate=f"{rate:.1f} rec/min")
    return records, new


def is_trainable(record: dict) -> bool:
    """Whether a record teaches anything: it did not fail and kept at least one agent turn."""
    return record["finish"] != "error" and any(m["role"] == "assistant" for m in record["dialogue"])


def counts(records: list[dict], store: RunStore, requested: int, seconds: float) -> dict:
    """What became of the inputs and dialogues, and the run's yield: written to ``run.json`` and shown in the
    summary. ``seconds`` is the run's time over all its invocations."""
    finish = Counter(r["finish"] for r in records)
    dropped = Counter(d["reason"] for r in records for d in (r.get("meta") or {}).get("dropped", []))
    trainable = sum(map(is_trainable, records))
    kept = sum(m["role"] == "assistant" for r in records for m in r["dialogue"])
    regenerated = sum(len((r.get("meta") or {}).get("regenerated", [])) for r in records)
    rejected = rejection_counts(store)
    accepted = [row for call in store.inputs() if call.get("call", -1) >= 0 for row in call.get("accepted", [])]
    by_reply = sum(v for k, v in rejected.items() if k.startswith("reply "))
    screened = sum("reply" in row for row in accepted) + by_reply  # inputs whose first reply was looked at
    return {"records": len(records), "trainable": trainable, "finish": {k: finish.get(k, 0) for k in FINISHES},
            "dropped_agent_turns": dict(dropped), "agent_turns": kept, "regenerated_agent_turns": regenerated,
            "env_turns": dict(Counter(kind for r in records for kind in (r.get("meta") or {}).get("env", []))),
            "inputs_rejected": rejected,
            "yield": {"trainable_share": round(trainable / max(1, requested), 4),
                      # every agent turn asked for: the kept, the dropped, and the cut-off first tries regenerated
                      "agent_turns_generated": kept + sum(dropped.values()) + regenerated,
                      "inputs_screened_by_reply": screened,
                      "inputs_passing_reply_screen": screened - by_reply,
                      "seconds_per_trainable_record": round(seconds / trainable, 2) if trainable else None}}


def summary_table(n: dict, requested: int, new: int, usage: Usage, elapsed: float, retries: int,
                  inputs_only: bool = False):
    from rich.table import Table

    table = Table(title="genpi synth")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("inputs", f"{n['inputs']} / {requested}")
    rejected = n["inputs_rejected"]
    if rejected:
        top = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1])[:4])
        table.add_row("inputs rejected", f"{sum(rejected.values())} ({top})")
    y, d = n["yield"], n["inputs_diversity"]
    if d["nearest_neighbour_similarity"] is not None:
        table.add_row("inputs: distinct-1 / distinct-2 / nearest-neighbour similarity",
                      f"{d['distinct_1']:.2f} / {d['distinct_2']:.2f} / {d['nearest_neighbour_similarity']:.2f}")
    if y["inputs_screened_by_reply"]:
        passed, screened = y["inputs_passing_reply_screen"], y["inputs_screened_by_reply"]
        table.add_row("inputs passing the reply screen", f"{passed} / {screened} ({passed / screened:.0%})")
    if not inputs_only:
        table.add_row("records", f"{n['records']} / {requested} ({new} new)")
        table.add_row("trainable records / requested", f"{n['trainable']} / {requested} ({y['trainable_share']:.0%})")
        table.add_row(f"finish: {' / '.join(FINISHES)}", " / ".join(str(n["finish"].get(k, 0)) for k in FINISHES))
        dropped = n["dropped_agent_turns"]
        table.add_row("agent turns kept / generated", f"{n['agent_turns']} / {y['agent_turns_generated']}"
                      + (f" (dropped: {', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else ""))
        table.add_row("agent turns regenerated after a cut-off", str(n["regenerated_agent_turns"]))
        if y["seconds_per_trainable_record"] is not None:
            table.add_row("seconds per trainable record", f"{y['seconds_per_trainable_record']:.1f}")
        env = n.get("env_turns") or {}
        if env.get("sandbox"):
            table.add_row("environment turns: sandbox / simulated", f"{env['sandbox']} / {env.get('simulated', 0)}")
    table.add_row("calls (retries)", f"{usage.calls} ({retries})")
    table.add_row("prompt tokens computed / reused", f"{usage.prompt_tokens - usage.cached_tokens} / {usage.cached_tokens}")
    table.add_row("tokens out", str(usage.completion_tokens))
    table.add_row("time", f"{elapsed:.1f} s")
    made = f"{n['inputs'] / max(elapsed, 1e-9) * 60:.1f} inputs/min" if inputs_only else f"{new / max(elapsed, 1e-9) * 60:.1f} records/min"
    table.add_row("rate", f"{made}, {usage.completion_tokens / max(elapsed, 1e-9):.1f} tokens/s")
    return table


def resolve_end_pattern(prompt: AgentPrompt, setting: str) -> str:
    """``--end-pattern``: auto (derived from the demonstrations), none, or a regex (checked)."""
    import re

    if setting == "auto":
        return episodes.derive_end_pattern(prompt)
    if setting == "none":
        return ""
    try:
        re.compile(setting)
    except re.error as e:
        raise UserError(f"--end-pattern {setting!r} is not a valid regular expression ({e}): fix it, or pass auto or none") from None
    return setting


def dry_run(prompt: AgentPrompt, config: SynthConfig, seeds: list[str]) -> None:
    """Print the exact messages each role would be sent for one input; send nothing."""
    from genpi.synth.inputs import pick_examples

    console = make_console()
    sample = seeds[0] if seeds else "<a user input proposed in step 1>"
    placeholder = "<the agent's reply, relayed verbatim>"
    dialogue = [{"role": "user", "content": sample}, {"role": "assistant", "content": placeholder}]
    gold = [ep.task for ep in episodes.episodes(prompt) if ep.task] + seeds
    views = {
        "1. inputs (synth model playing the user)": roles.user_messages(prompt, pick_examples(gold, [], 0, config.seed)),
        **({"1'. inputs, Magpie-style (the last user turn is continued)": roles.open_user_turn(prompt)}
           if config.input_sampler != "roleswap" else {}),
        "2a. AS-IS (agent, student view: no prompt)": roles.as_is_messages(sample),
        "2b. TO-BE / dialogue turn 1 (agent, teacher view)": roles.agent_messages(prompt, dialogue[:1]),
        "3. environment turn 1 (role swap)": roles.environment_messages(prompt, dialogue, config.end_marker),
        "4. reason (synth model)": roles.reason_messages(prompt, sample, "<AS-IS answer>", "<TO-BE answer>"),
    }
    for title, messages in views.items():
        console.rule(title)
        for m in messages:
            console.print(f"[bold]{m['role']}[/bold]:", m["content"], markup=False, highlight=False)
    pattern = resolve_end_pattern(prompt, config.end_pattern)
    stops = episodes.stop_strings(prompt)
    console.rule("stop strings")
    console.print(f"agent turns stop at {stops['agent']}, environment turns at {stops['env']}", markup=False,
                  highlight=False)
    console.rule("environment")
    if config.env == "sandbox":
        opener = episodes.environment_opener(prompt)
        console.print(f"an agent turn's first fenced bash block runs in the dialogue's sandbox; the reply is {opener!r} "
                      f"and its output (at most {config.env_output_chars} characters); turns without one are "
                      "answered by the model as in 3.", markup=False, highlight=False)
    else:
        console.print("simulated: the model answers every agent turn as in 3.", markup=False, highlight=False)
    console.rule("input screen")
    console.print(("a proposed input is kept only if the agent's reply in 2b is whole (a reply cut off at "
                   f"{config.max_new_tokens} tokens is made again with {config.regenerate_max_new_tokens or 2 * config.max_new_tokens})"
                   + (f" and passes {config.checker}" if config.checker else "") + "; that reply is the dialogue's first turn")
                  if config.screen_by_reply else "by its text only (--no-screen-by-reply)", markup=False, highlight=False)
    console.rule("end of a dialogue")
    console.print(f"an agent turn whose last line matches {pattern!r}" if pattern else "no end pattern",
                  f"or an environment reply with {config.end_marker!r}; at most {config.max_turns} agent turns",
                  markup=False, highlight=False)


def excluded_inputs(run_dir: str) -> list[str]:
    """The inputs of another run, which this one must not repeat (exact or near duplicates)."""
    if not run_dir:
        return []
    store = RunStore(run_dir)
    if not store.run_file.exists():
        raise UserError(f"--exclude-run {run_dir} is not a synthesis run (no run.json): pass the --out of `genpi synth`")
    return [row["input"] for call in store.inputs() for row in call["accepted"]]


def load_checker(spec: str):
    """``--checker`` as a callable returning ``(ok, reason)``, or None; a bad spec is a one-line error now."""
    if not spec:
        return None
    from genpi.checkers import get_checker  # the checker format synthesis and evaluation share

    return get_checker(spec)


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
    """What a run needs beyond valid values (checked by the config itself)."""
    if not c.prompt:
        raise UserError("no prompt given: pass --prompt FILE")
    excluded_inputs(c.exclude_run)  # fails now, before the run directory is made, if it is not a run


def synthesize(config: SynthConfig, client: ChatClient | None = None, console=None) -> Path:
    """Run (or resume) a synthesis into ``config.out`` and return that directory (``load_run`` reads it).

    Args:
        config: the run's settings.
        client: a chat client to use instead of the one the config names (tests pass a fake).
        console: a ``rich`` console for progress and the summary (default: stdout).
    """
    _validate(config)
    prompt = load_prompt(config.prompt)
    end_pattern = resolve_end_pattern(prompt, config.end_pattern)
    backend = ""
    if config.env == "sandbox" and not config.dry_run and not config.inputs_only:
        from genpi.sandbox import check_available

        backend = check_available(config.sandbox_backend)  # a one-line error now, before the run directory exists
    seeds = read_seeds(config.seed_inputs)
    checker = load_checker(config.checker)
    if config.dry_run:
        dry_run(prompt, config, seeds)
        return Path(config.out)
    console = console or make_console()
    store = RunStore(config.out)
    signature = {**config.signature(), "prompt_hash": prompt.hash, "templates": roles.templates_signature()}
    info = store.open(signature, overwrite=config.overwrite)
    if info is None:  # written before anything can fail (a server that will not start), so the rerun resumes
        info = RunInfo(signature=signature, genpi_version=__version__)
        store.write_info(info)

    with ExitStack() as stack:
        base_url = config.base_url or os.environ.get("OPENAI_BASE_URL", "")
        served, endpoint = config.model, public_url(base_url) if client is None else type(client).__name__
        if client is None and not base_url:
            from genpi.models import resolve_model
            from genpi.serving.local import LocalServer

            if {config.env_model, config.synth_model} - {"", config.model}:
                raise UserError("the embedded server serves one model: pass --base-url to use another --env-model or --synth-model")
            served = resolve_model(config.model)
            with console.status("starting the embedded server"):
                server = stack.enter_context(LocalServer(served, log_path=store.dir / "server.log"))
            base_url, endpoint = server.base_url, "embedded genpi server"
        if client is None:
            client = OpenAIChatClient(base_url=base_url, api_key=config.api_key or None, timeout=config.timeout,
                                      retries=config.retries)
        models = Roles(agent=served, env=config.env_model or served, synth=config.synth_model or served)
        syn = Synthesizer(prompt, config, client, models, end_pattern=end_pattern, stops=episodes.stop_strings(prompt),
                          sandbox_backend=backend, env_opener=episodes.environment_opener(prompt), checker=checker,
                          demonstrated=bool(episodes.episodes(prompt)))
        info = dataclasses.replace(
            info, genpi_version=__version__, prompt_path=str(config.prompt), prompt_hash=prompt.hash,
            prompt=prompt.to_dict(), endpoint=endpoint, models=asdict(models), end_pattern=end_pattern,
            stop=syn.stops, config={**config.public(), "base_url": public_url(config.base_url) if config.base_url else ""},
            signature=signature,
        )
        store.write_info(info)

        start = time.monotonic()
        with progress(console) as bars, workers(syn) as pool:
            inputs = gather_inputs(syn, store, seeds, excluded_inputs(config.exclude_run), pool, bars)
            records, new = ([], 0) if config.inputs_only else gather_records(syn, store, inputs, pool, bars)
        elapsed = time.monotonic() - start

    retries = getattr(client, "retry_count", 0)
    info.runs.append({"new_records": new, "seconds": round(elapsed, 2), "calls": syn.usage.calls, "retries": retries,
                 "prompt_tokens": syn.usage.prompt_tokens, "cached_prompt_tokens": syn.usage.cached_tokens,
                 "completion_tokens": syn.usage.completion_tokens})
    n = counts(records, store, config.num_inputs, sum(r["seconds"] for r in info.runs))
    n = info.counts = {"inputs": len(inputs), "inputs_diversity": diversity(inputs), **n}
    store.write_info(info)
    console.print(summary_table(n, config.num_inputs, new, syn.usage, elapsed, retries, config.inputs_only))
    if len(inputs) < config.num_inputs:
        console.print(f"[yellow]only {len(inputs)} usable distinct inputs after {config.num_inputs * 6} proposals at most: "
                      "the model playing the user repeats itself or leaves its role (see the rejections in "
                      "inputs.jsonl); add --seed-inputs, or raise --inputs-temperature[/yellow]")
    return store.dir
