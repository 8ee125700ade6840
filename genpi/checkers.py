"""Protocol checkers: does one reply follow exactly the output format its prompt demands?

``--checker`` names one, in one of four forms:

* a built-in name: ``json`` (the reply is exactly one JSON value) or ``nonempty``;
* ``regex:PATTERN``: the reply, stripped, matches ``PATTERN`` as a whole (``re.fullmatch``);
* a JSON Schema file (``.json``): the reply is exactly one JSON value, valid under the schema; the extension
  keyword ``"x-key-order": true`` on an object schema also asks for the keys in the order of its ``properties``;
* ``FILE.py:FUNCTION``: a function taking the reply and returning a bool, an ``(ok, reason)`` tuple, an
  ``(ok, reason, action)`` tuple or a :class:`Check`. From Python, any such callable can be passed instead of a string.

A checker returns a :class:`Check` whose ``reason`` is a short, countable label of the failure (no text of the
reply in it), so a report can say *how* a system fails, not only how often.

A checker may also say what a passing reply *does*: its ``action``, a dict of named fields (``genpi eval`` compares
them with the prompted model's, docs/EVALUATION.md "Action agreement"). A ``regex:`` pattern names them with named
groups (``(?P<action>...)``, ``(?P<arg>...)``); a JSON Schema lists the reply's fields in the extension keyword
``"x-action": ["field", ...]``; a Python checker returns them as the third element. By convention the field
``action`` names the kind of action and the others its arguments.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Union

from genpi.errors import UserError


class Check(NamedTuple):
    ok: bool
    reason: str = ""
    action: dict | None = None  # what a passing reply does, as named fields (None: the checker does not say)


@dataclass(frozen=True)
class Checker:
    """A checker ready to score replies: ``name`` is what the report shows, ``spec`` what the user gave."""

    name: str
    spec: Union[str, Callable]
    check: Callable[[str], Check]

    def __call__(self, reply: str) -> Check:
        return self.check(reply)


def get_checker(spec: Union[str, Callable]) -> Checker:
    """The checker ``spec`` names (see the module docstring), loaded and validated once.

    Raises:
        UserError: the spec names no checker, or its pattern, schema or Python file is unusable.
    """
    if callable(spec):
        name = f"{getattr(spec, '__module__', None) or '?'}.{getattr(spec, '__qualname__', type(spec).__name__)}"
        return Checker(name, spec, _guarded(spec))
    if spec in BUILTINS:
        return Checker(spec, spec, BUILTINS[spec])
    if spec.startswith("regex:"):
        return Checker(spec, spec, _regex(spec.removeprefix("regex:")))
    if spec.endswith(".json"):
        return Checker(spec, spec, _schema(Path(spec)))
    path, sep, function = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return Checker(spec, spec, _guarded(_function(Path(path), function)))
    if spec.endswith(".py"):
        raise UserError(f"checker {spec!r} names a Python file but no function: write {spec}:FUNCTION")
    raise UserError(f"unknown checker {spec!r}: use a built-in name ({', '.join(BUILTINS)}), regex:PATTERN, "
                    "a JSON Schema file (.json) or FILE.py:FUNCTION")


# --- built-ins


def nonempty(reply: str) -> Check:
    """Any reply with a non-whitespace character."""
    return Check(True) if reply.strip() else Check(False, "empty reply")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json module reads NaN and Infinity; JSON has neither


def _parse_json(reply: str, **kwargs):
    """``(value, Check(True))`` if the stripped reply is exactly one JSON value, else ``(None, failed Check)``."""
    text = reply.strip()
    if not text:
        return None, Check(False, "empty reply")
    if text.startswith("```"):
        return None, Check(False, "code fence around the JSON")
    try:
        return json.loads(text, parse_constant=_no_constant, **kwargs), Check(True)
    except ValueError:
        pass
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    try:
        json.JSONDecoder(parse_constant=_no_constant).raw_decode(text, min(starts) if starts else 0)
        return None, Check(False, "text around the JSON")
    except ValueError:
        return None, Check(False, "not valid JSON")


def json_value(reply: str) -> Check:
    """Exactly one JSON value: no code fence or text around it (surrounding whitespace is ignored)."""
    return _parse_json(reply)[1]


BUILTINS: dict[str, Callable[[str], Check]] = {"json": json_value, "nonempty": nonempty}


# --- regex:PATTERN


def _regex(pattern: str) -> Callable[[str], Check]:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise UserError(f"checker pattern {pattern!r} is not a valid regular expression ({e.msg} at position "
                        f"{e.pos}): fix it, quoting it for the shell") from None

    def check(reply: str) -> Check:
        text = reply.strip()
        if not text:
            return Check(False, "empty reply")
        m = compiled.fullmatch(text)
        if m:
            fields = {k: " ".join(v.split()) for k, v in m.groupdict().items() if v is not None}
            return Check(True, "", fields or None)
        m = compiled.search(text)
        if not m:
            return Check(False, "no match")
        before, after = m.start() > 0, m.end() < len(text)
        return Check(False, "text around the match" if before and after else
                     "text before the match" if before else "text after the match")

    return check


# --- JSON Schema file


class _Object(dict):
    """A JSON object as parsed, knowing whether a key occurred twice (a dict keeps only the last value)."""

    has_duplicates = False


def _object(pairs: list) -> _Object:
    obj = _Object(pairs)
    obj.has_duplicates = len(obj) < len(pairs)
    return obj


def _first_duplicate(value, path: str = "$") -> str | None:
    """The path of the first object holding a duplicate key, depth first."""
    if isinstance(value, _Object) and value.has_duplicates:
        return path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _first_duplicate(child, path + ("[*]" if isinstance(key, int) else f".{key}"))
        if found:
            return found
    return None


def _key_order(validator, enabled, instance, schema):
    """``"x-key-order": true``: an object's keys that its ``properties`` name come in that order."""
    from jsonschema.exceptions import ValidationError

    if not enabled or not validator.is_type(instance, "object"):
        return
    order = list(schema.get("properties", {}))
    present = [k for k in instance if k in order]  # a parsed dict keeps the reply's key order
    if present != sorted(present, key=order.index):
        yield ValidationError(f"keys are not in the order {order}")


def _annotation(validator, value, instance, schema):
    """``"x-action"`` annotates (which fields say what the reply does); it validates nothing."""
    return iter(())


def _schema(path: Path) -> Callable[[str], Check]:
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError, best_match

    if not path.is_file():
        raise UserError(f"checker schema {path} does not exist: pass the path of a JSON Schema file")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"checker schema {path} is not valid JSON ({e}): fix the file") from None
    if not isinstance(schema, (dict, bool)):
        raise UserError(f"checker schema {path} holds a {type(schema).__name__}, not a schema: write a JSON object")
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        raise UserError(f"checker schema {path} is not a valid JSON Schema ({e.message}): fix the file") from None
    validator = validators.extend(cls, {"x-key-order": _key_order, "x-action": _annotation})(schema)
    fields = schema.get("x-action") if isinstance(schema, dict) else None
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
        raise UserError(f"checker schema {path}: \"x-action\" must be a list of the reply's field names, "
                        "e.g. [\"category\", \"escalate\"]")

    def check(reply: str) -> Check:
        value, parsed = _parse_json(reply, object_pairs_hook=_object)
        if not parsed.ok:
            return parsed
        duplicate = _first_duplicate(value)
        if duplicate:
            return Check(False, f"{duplicate}: duplicate key")
        error = best_match(validator.iter_errors(value))
        if error is None:
            return Check(True, "", {k: value.get(k) for k in fields} if fields and isinstance(value, dict) else None)
        # the instance's path with array indexes as [*], and the failing keyword: equal failures count together
        where = "$" + "".join("[*]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return Check(False, f"{where}: {'key order' if error.validator == 'x-key-order' else error.validator}")

    return check


# --- FILE.py:FUNCTION, or a callable from Python


def _function(path: Path, name: str) -> Callable:
    if not path.is_file():
        raise UserError(f"checker file {path} does not exist: pass FILE.py:FUNCTION with an existing file")
    if not name.isidentifier():
        raise UserError(f"checker {path}:{name} names no function: write {path}:FUNCTION")
    module_name = f"genpi_checker_{path.stem.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling in the file look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"checker file {path} raised {type(e).__name__} on import ({detail}): fix the file") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise UserError(f"checker file {path} has no function {name!r}: define {name}(reply) or name another one")
    if not callable(fn):
        raise UserError(f"checker {path}:{name} is a {type(fn).__name__}, not a function: name a function")
    return fn


def _guarded(fn: Callable) -> Callable[[str], Check]:
    """``fn`` as a checker: its bool or ``(ok, reason)`` as a :class:`Check`; a raise is a failed check, counted
    by exception type, so one odd reply cannot stop an evaluation."""

    def check(reply: str) -> Check:
        try:
            result = fn(reply)
        except Exception as e:
            return Check(False, f"checker raised {type(e).__name__}")
        if isinstance(result, bool):
            return Check(True) if result else Check(False, "checker returned False")
        if isinstance(result, tuple) and len(result) in (2, 3):
            action = result[2] if len(result) == 3 else None
            if action is not None and not isinstance(action, dict):
                return Check(False, "checker returned an action that is not a dict")
            return Check(bool(result[0]), str(result[1]), action if result[0] else None)
        return Check(False, f"checker returned {type(result).__name__}")

    return check
