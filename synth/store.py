"""The on-disk store of a synthesis run: ``run.json`` plus append-only JSONL files.

Every line is appended, flushed and fsynced as soon as its record is complete, so a crash or a kill loses no
finished work. On reopening, a torn last line (a write cut short by a kill) is cut off and redone; a run whose
config signature differs is refused unless the caller asks to overwrite it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from typing import TYPE_CHECKING

from genpi.errors import UserError
from genpi.prompt import AgentPrompt, load_prompt

if TYPE_CHECKING:
    import datasets

RUN_FILE = "run.json"
INPUTS_FILE = "inputs.jsonl"
RECORDS_FILE = "records.jsonl"
ERRORS_FILE = "errors.jsonl"


def stable_id(*parts) -> str:
    """A deterministic id: the same parts give the same id in every run."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file as its writer, repairing a torn last line in place; a bad line elsewhere is an error.

    Readers that are not the writer use :func:`load_run`, which leaves the file alone."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good_end, pos = [], 0, 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        is_last = i == len(lines) - 1
        end = pos + len(line) + (0 if is_last else 1)
        if line.strip():
            try:
                if is_last:
                    raise ValueError("no newline: the write was cut short")
                rows.append(json.loads(line))
            except ValueError:
                if not is_last and any(l.strip() for l in lines[i + 1 :]):
                    raise UserError(
                        f"{path}, line {i + 1} is not valid JSON: fix or delete that line, or rerun with --overwrite"
                    ) from None
                break
        good_end = end
        pos = end
    if good_end < len(data):
        with open(path, "r+b") as f:  # cut the torn tail so the next append starts on a clean line
            f.truncate(good_end)
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class RunInfo:
    """``run.json``: what a synthesis run was made from and what it made. This class is the one reader and writer.

    Attributes:
        signature: the settings a resume must match (``SynthConfig.signature`` plus the prompt hash and templates).
        prompt_path, prompt_hash, prompt: the prompt file, its hash, and the prompt itself
            (:meth:`AgentPrompt.to_dict`), so the run stays usable when the file moves or changes.
        endpoint, models: where the dialogues came from (credentials stripped) and which model played each role.
        end_pattern, stop: how dialogues ended and the stop strings of each role.
        config: the settings, without the API key.
        counts: what became of the inputs and dialogues (finishes, dropped turns, rejected inputs).
        runs: one entry per invocation: new records, seconds, calls, prompt tokens computed and reused.
    """

    signature: dict = field(default_factory=dict)
    genpi_version: str = ""
    prompt_path: str = ""
    prompt_hash: str = ""
    prompt: dict = field(default_factory=dict)
    endpoint: str = ""
    models: dict = field(default_factory=dict)
    end_pattern: str = ""
    stop: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: str | Path) -> "RunInfo":
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise UserError(f"{run_dir} is not a synthesis run (no {RUN_FILE}): run `genpi synth --out {run_dir}` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{path} is not valid JSON: delete the run directory or pass --overwrite") from None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})  # keys of later versions are left out

    def write(self, run_dir: str | Path) -> None:
        write_json_atomic(Path(run_dir) / RUN_FILE, asdict(self))

    def agent_prompt(self) -> AgentPrompt:
        """The run's prompt: the original file when it is still there unchanged, else the stored one.

        The file is preferred because it keeps the prompt's exact text (what prompt generation learns to write);
        the stored prompt has that text too since it is written, older runs re-render it from the messages.
        """
        if self.prompt_path and Path(self.prompt_path).is_file():
            prompt = load_prompt(self.prompt_path)
            if prompt.hash == self.prompt_hash:
                return prompt
        if not self.prompt:
            raise UserError(f"{RUN_FILE} has no prompt and its prompt file is gone or changed: rerun `genpi synth`")
        prompt = AgentPrompt.from_dict(self.prompt, source=self.prompt_path or RUN_FILE)
        if self.prompt_hash and prompt.hash != self.prompt_hash:
            raise UserError(f"the prompt in {RUN_FILE} does not match its prompt_hash {self.prompt_hash}: "
                            "the run directory is damaged")
        return prompt


class RunStore:
    """A run directory: open it for a config signature, then append inputs and records."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    @property
    def run_file(self) -> Path:
        return self.dir / RUN_FILE

    def open(self, signature: dict, overwrite: bool = False) -> RunInfo | None:
        """Create the run, or check that an existing one was made with the same signature.

        Returns the existing ``run.json`` (None for a new run).
        """
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"--out {self.dir} is a file: choose a directory path")
        info = None
        if self.run_file.exists():
            info = RunInfo.read(self.dir)
            if info.signature != signature:
                if not overwrite:
                    changed = _diff_keys(info.signature or {}, signature)
                    raise UserError(
                        f"{self.dir} was made with a different config ({', '.join(changed)} changed): "
                        "rerun with the same settings to resume, pass --overwrite to start over, or choose another --out"
                    )
                shutil.rmtree(self.dir)
                info = None
        elif self.dir.exists() and any(self.dir.iterdir()) and not overwrite:
            raise UserError(f"--out {self.dir} exists and is not a genpi run: choose another directory or pass --overwrite")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create --out {self.dir} ({e.strerror}): choose a directory path you can write") from None
        return info

    def write_info(self, info: RunInfo) -> None:
        info.write(self.dir)

    def inputs(self) -> list[dict]:
        return read_jsonl(self.dir / INPUTS_FILE)

    def records(self) -> list[dict]:
        return read_jsonl(self.dir / RECORDS_FILE)

    def append_input_call(self, row: dict) -> None:
        append_jsonl(self.dir / INPUTS_FILE, row)

    def append_record(self, row: dict) -> None:
        append_jsonl(self.dir / RECORDS_FILE, row)

    def retire_failed(self) -> int:
        """Move failed records (``finish == "error"``) to ``errors.jsonl`` so that this run makes them again.

        They are appended there first and only then dropped from ``records.jsonl`` (rewritten atomically), so a
        kill in between loses nothing; the archive keeps every failure with its error and raw outputs.
        """
        path = self.dir / RECORDS_FILE
        rows = read_jsonl(path)
        failed = [r for r in rows if r.get("finish") == "error"]
        if not failed:
            return 0
        for row in failed:
            append_jsonl(self.dir / ERRORS_FILE, row)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r.get("finish") != "error")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return len(failed)


def _diff_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["signature"]


def load_inputs(run_dir: str | Path) -> list[dict]:
    """The accepted inputs of a run (``[{id, index, input}]``), read only: a torn last line is skipped, not cut."""
    path = Path(run_dir) / INPUTS_FILE
    rows = []
    for line in (path.read_bytes().split(b"\n") if path.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # blank, or the torn last line of a run being written
    return [a for call in rows for a in call.get("accepted", [])]


def read_records(run_dir: str | Path) -> list[dict]:
    """A run's records as plain dicts, in the order they were written (``load_run`` gives a ``Dataset``)."""
    return RunStore(run_dir).records()


def load_run(run_dir: str | Path) -> tuple[RunInfo, "datasets.Dataset"]:
    """Load a synthesis run: ``(run_info, records)`` with ``records`` a ``datasets.Dataset``.

    This is the one documented call for using a run directory as a Hugging Face dataset; it goes through
    ``datasets.load_dataset("json", ...)``, so the result can be saved or pushed like any dataset.
    """
    run_dir = Path(run_dir)
    run_file, records_file = run_dir / RUN_FILE, run_dir / RECORDS_FILE
    if not run_file.exists() or not records_file.exists():
        raise UserError(f"{run_dir} is not a synthesis run (no run.json/records.jsonl): run `genpi synth --out {run_dir}` first")
    info = RunInfo.read(run_dir)
    data = records_file.read_bytes()
    if not data or data.endswith(b"\n"):
        return info, _json_dataset(records_file)
    # A run still being written (or killed mid-write) ends in a torn line: read the finished lines from a snapshot,
    # and leave the file itself to the writer, which repairs it when it resumes.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genpi-run-") as tmp:
        snapshot = Path(tmp) / RECORDS_FILE
        snapshot.write_bytes(data[: data.rfind(b"\n") + 1])
        return info, _json_dataset(snapshot)


def _json_dataset(path: Path):
    """``load_dataset("json")`` without its progress bar (a local file: the bar is only noise on stderr)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
