"""Unit tests of the protocol checkers: the four --checker forms, a Python callable, and the examples' own formats."""

import json
from pathlib import Path

import pytest

from genpi.cli import main
from genpi.errors import UserError
from genpi.checkers import Check, get_checker
from genpi.prompt import load_prompt
from eval_fixtures import BASH_PROMPT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASH_CHECKS = f"{EXAMPLES / 'bash_agent.checks.py'}:protocol"
SUPPORT_SCHEMA = str(EXAMPLES / "support_agent.schema.json")


def _fails(checker, reply: str, reason: str) -> None:
    check = checker(reply)
    assert not check.ok, (reply, check)
    assert check.reason == reason, (reply, check)


# --- built-ins


@pytest.mark.parametrize("reply", ['{"a": [1, 2]}', "[1, 2]", "42", '"text"', 'null', '\n {"a": 1} \n'])
def test_json_accepts_one_json_value(reply):
    assert get_checker("json")(reply).ok


@pytest.mark.parametrize("reply,reason", [
    ("", "empty reply"),
    ("  \n", "empty reply"),
    ('```json\n{"a": 1}\n```', "code fence around the JSON"),
    ('Here it is: {"a": 1}', "text around the JSON"),
    ('{"a": 1}\nHope this helps!', "text around the JSON"),
    ("[1, 2] and more", "text around the JSON"),
    ("a: 1", "not valid JSON"),
    ("{'a': 1}", "not valid JSON"),
    ("NaN", "not valid JSON"),  # Python's json module reads it; JSON has no NaN
])
def test_json_rejects_with_reason(reply, reason):
    _fails(get_checker("json"), reply, reason)


def test_nonempty():
    checker = get_checker("nonempty")
    assert checker("x").ok and checker.name == "nonempty"
    _fails(checker, " \n\t", "empty reply")


# --- regex:PATTERN, on a Think/Act format this code has never seen, with blank lines between Think and Act

THOUGHT_ACTION = r"regex:Think: \S[^\n]*\n(?:[ \t]*\n)*Act: (?:search|lookup|finish)\[[^\]\n]+\]"


@pytest.mark.parametrize("reply", [
    "Think: I need the capital first.\nAct: search[capital of Peru]",
    "Think: I need the capital first.\n\nAct: search[capital of Peru]",
    "Think: The page names it.\n\n  \n\nAct: finish[Lima]",
    "\n\nThink: Look it up.\n\nAct: lookup[population]\n",  # surrounding whitespace is ignored
])
def test_regex_accepts_think_act_with_blank_lines(reply):
    assert get_checker(THOUGHT_ACTION)(reply).ok


@pytest.mark.parametrize("reply,reason", [
    ("", "empty reply"),
    ("Sure!\nThink: Look it up.\n\nAct: search[Lima]", "text before the match"),
    ("Think: Look it up.\n\nAct: search[Lima]\nThen I will answer.", "text after the match"),
    ("OK. Think: Look it up.\nAct: finish[Lima] Done.", "text around the match"),
    ("Think: Look it up.\nMaybe twice.\n\nAct: search[Lima]", "no match"),
    ("Think: Look it up.\n\nAct: browse[Lima]", "no match"),
])
def test_regex_rejects_with_a_countable_reason(reply, reason):
    _fails(get_checker(THOUGHT_ACTION), reply, reason)


def test_regex_matches_the_whole_reply():
    checker = get_checker("regex:yes|no")
    assert checker.name == "regex:yes|no" and checker(" yes\n").ok
    _fails(checker, "yes, sure", "text after the match")


# --- a JSON Schema file, for a JSON format this code has never seen: an invoice extractor

INVOICE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string", "pattern": "^INV-[0-9]{4,}$"},
        "vendor": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1}, "vat_id": {"type": ["string", "null"]}},
            "required": ["name", "vat_id"],
            "additionalProperties": False,
        },
        "lines": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"description": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1},
                               "unit_price": {"type": "number", "minimum": 0}},
                "required": ["description", "quantity", "unit_price"],
                "additionalProperties": False,
                "x-key-order": True,
            },
        },
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "total": {"type": "number"},
    },
    "required": ["invoice_number", "vendor", "lines", "currency", "total"],
    "additionalProperties": False,
}

INVOICE = {
    "invoice_number": "INV-20931",
    "vendor": {"name": "Acme Tools GmbH", "vat_id": None},
    "lines": [{"description": "Hammer", "quantity": 2, "unit_price": 12.5},
              {"description": "Nails (box)", "quantity": 1, "unit_price": 3.2}],
    "currency": "EUR",
    "total": 28.2,
}


def _invoice(**changes) -> str:
    return json.dumps({**INVOICE, **changes})


@pytest.fixture
def invoice_checker(tmp_path):
    path = tmp_path / "invoice.schema.json"
    path.write_text(json.dumps(INVOICE_SCHEMA))
    return get_checker(str(path))


def test_schema_accepts_a_valid_reply(invoice_checker):
    assert invoice_checker(json.dumps(INVOICE)).ok
    assert invoice_checker("\n" + json.dumps(INVOICE, indent=2) + "\n").ok
    # key order is only asked of the line items, whose schema says "x-key-order": true
    assert invoice_checker(json.dumps(dict(reversed(list(INVOICE.items()))))).ok


LINE = {"description": "Saw", "quantity": 1, "unit_price": 20}


@pytest.mark.parametrize("reply,reason", [
    ("", "empty reply"),
    ("```json\n" + json.dumps(INVOICE) + "\n```", "code fence around the JSON"),
    ("Extracted: " + json.dumps(INVOICE), "text around the JSON"),
    ("invoice INV-20931", "not valid JSON"),
    ("[]", "$: type"),
    (json.dumps({k: v for k, v in INVOICE.items() if k != "total"}), "$: required"),
    (_invoice(notes="paid"), "$: additionalProperties"),
    (_invoice(invoice_number="20931"), "$.invoice_number: pattern"),
    (_invoice(currency="CHF"), "$.currency: enum"),
    (_invoice(vendor={"name": "Acme"}), "$.vendor: required"),
    (_invoice(vendor={"name": "Acme", "vat_id": 12}), "$.vendor.vat_id: type"),
    (_invoice(lines=[]), "$.lines: minItems"),
    (_invoice(lines=[LINE, {**LINE, "quantity": 0}]), "$.lines[*].quantity: minimum"),
    (_invoice(lines=[{**LINE, "quantity": 0}, LINE]), "$.lines[*].quantity: minimum"),  # same failure, same reason
    (_invoice(lines=[LINE, {"quantity": 1, "description": "Saw", "unit_price": 20}]), "$.lines[*]: key order"),
    (_invoice(vendor={"name": "Acme", "vat_id": None}).replace('"vat_id": null', '"vat_id": null, "name": "Other"'),
     "$.vendor: duplicate key"),
])
def test_schema_rejects_with_path_and_keyword(invoice_checker, reply, reason):
    _fails(invoice_checker, reply, reason)


def test_schema_reason_holds_no_value_of_the_reply(invoice_checker):
    reason = invoice_checker(_invoice(currency="Swiss francs, please")).reason
    assert "Swiss" not in reason and reason == "$.currency: enum"


# --- FILE.py:FUNCTION and Python callables

CHECKS_PY = '''
from genpi.checkers import Check

LIMIT = 3

def short(reply):
    return len(reply.split()) <= LIMIT

def shouting(reply):
    return (reply.isupper(), "" if reply.isupper() else "lower case")

def as_check(reply):
    return Check(reply.endswith("!"), "no exclamation mark")

def fragile(reply):
    return {"ok": True}[reply]

def nothing(reply):
    pass
'''


@pytest.fixture
def checks_py(tmp_path):
    path = tmp_path / "my_checks.py"
    path.write_text(CHECKS_PY)
    return path


def test_python_file_function_forms(checks_py):
    short = get_checker(f"{checks_py}:short")
    assert short.name == f"{checks_py}:short"
    assert short("three words here").ok
    _fails(short, "four words are here", "checker returned False")
    assert get_checker(f"{checks_py}:shouting")("HEY").ok
    _fails(get_checker(f"{checks_py}:shouting"), "hey", "lower case")
    assert get_checker(f"{checks_py}:as_check")("hey!").ok
    _fails(get_checker(f"{checks_py}:as_check"), "hey", "no exclamation mark")


def test_python_function_that_raises_or_returns_nothing_fails_the_reply(checks_py):
    fragile = get_checker(f"{checks_py}:fragile")
    assert fragile("ok").ok
    _fails(fragile, "other", "checker raised KeyError")
    _fails(get_checker(f"{checks_py}:nothing"), "x", "checker returned NoneType")


def test_callable_spec():
    def even_length(reply):
        return len(reply) % 2 == 0, "odd length"

    checker = get_checker(even_length)
    assert checker.spec is even_length and checker.name.endswith("test_callable_spec.<locals>.even_length")
    assert checker("ab").ok
    _fails(checker, "abc", "odd length")
    _fails(get_checker(lambda reply: 1 / 0), "x", "checker raised ZeroDivisionError")
    assert get_checker(lambda reply: Check(True))("x").ok


# --- one-line errors for bad specs


def _user_error(spec, *fragments) -> None:
    with pytest.raises(UserError) as e:
        get_checker(spec)
    message = str(e.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_specs_are_one_line_user_errors(tmp_path, checks_py):
    _user_error("yaml", "unknown checker 'yaml'", "json, nonempty", "regex:PATTERN", ".json", "FILE.py:FUNCTION")
    _user_error("bash_protocol", "unknown checker 'bash_protocol'")  # the examples' formats left the library
    _user_error("regex:Think: (unclosed", "'Think: (unclosed'", "not a valid regular expression")
    _user_error(str(tmp_path / "missing.json"), "missing.json does not exist")
    (tmp_path / "broken.json").write_text('{"type": "object",}')
    _user_error(str(tmp_path / "broken.json"), "broken.json is not valid JSON")
    (tmp_path / "bad.json").write_text('{"type": "strin"}')
    _user_error(str(tmp_path / "bad.json"), "bad.json is not a valid JSON Schema")
    (tmp_path / "list.json").write_text("[1, 2]")
    _user_error(str(tmp_path / "list.json"), "list.json holds a list")
    _user_error(f"{tmp_path / 'missing.py'}:check", "missing.py does not exist")
    _user_error(str(checks_py), "names a Python file but no function", f"{checks_py}:FUNCTION")
    _user_error(f"{checks_py}:", "names no function")
    _user_error(f"{checks_py}:absent", "has no function 'absent'")
    _user_error(f"{checks_py}:LIMIT", "is a int, not a function")
    (tmp_path / "boom.py").write_text("import no_such_module_for_genpi\n")
    _user_error(f"{tmp_path / 'boom.py'}:check", "boom.py raised ModuleNotFoundError on import")
    (tmp_path / "syntax.py").write_text("def check(reply)\n    return True\n")
    _user_error(f"{tmp_path / 'syntax.py'}:check", "syntax.py raised SyntaxError on import")


def test_eval_cli_rejects_a_bad_checker_in_one_line(tmp_path, capsys):
    f = tmp_path / "inputs.txt"
    f.write_text("Count the users.\n")
    assert main(["eval", "--prompt", str(BASH_PROMPT), "--inputs", str(f), "--checker", "regex:("]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genpi: error: checker pattern '('") and "\n" not in err


# --- the examples' formats, moved out of the library: the old verdicts on the old cases

BASH_OK = [
    "Think: I count the files.\nAct: bash\n```bash\nfind /var -name '*.log' | wc -l\n```",
    "Think: The count is 17.\nAct: answer(17)",
    "Think: The directory exists and the files are copied.\nAct: finish",
    "\n  Think: Two lines of command.\nAct: bash\n```bash\ncd /tmp &&\nls\n```\n",  # surrounding whitespace ignored
    "Think: Nested parentheses are part of the answer.\nAct: answer(f(x))",
    # blank lines that other prompts of this kind put between Think: and Act:, and before the block
    "Think: I count the files.\n\nAct: bash\n```bash\nls | wc -l\n```",
    "Think: I count the files.\n \n\nAct: bash\n\n```bash\nls | wc -l\n```",
    "Think: Done.\n\nAct: finish",
    "Think: The count is 17.\n\nAct: answer(17)",
]

BASH_BAD = [
    ("", "empty reply"),
    ("Sure! Think: I count.\nAct: finish", "text before Think:"),
    ("Here you go:\nThink: I count.\nAct: finish", "text before Think:"),
    ("I would run ls.", "no Think: line"),
    ("Think:\nAct: finish", "empty Think: line"),
    ("Think: I count.", "no Act: line after Think:"),
    ("Think: I count.\nLet me see.\nAct: finish", "text between Think: and Act:"),
    ("Think: I count.\n\nLet me see.\n\nAct: finish", "text between Think: and Act:"),
    ("Think: I count.\nAct: bash\nls /tmp", "Act: bash without a fenced bash block"),
    ("Think: I count.\nAct: bash\n```bash\nls /tmp\n```\nThe output will show the files.", "malformed bash block or text after it"),
    ("Think: I count.\nAct: bash\n```sh\nls /tmp\n```", "malformed bash block or text after it"),
    ("Think: I count.\nAct: bash\nI list it.\n```bash\nls /tmp\n```", "malformed bash block or text after it"),
    ("Think: I count.\nAct: bash\n```bash\n \n```", "empty bash command"),
    ("Think: I count.\nAct: bash\n```bash\nls\n```\n```bash\npwd\n```", "more than one fenced block"),
    ("Think: Done.\nAct: answer()", "empty answer()"),
    ("Think: Done.\nAct: answer(17) files", "malformed answer(...) or text after it"),
    ("Think: Done.\nAct: answer 17", "malformed answer(...) or text after it"),
    ("Think: Done.\nAct: finish\nAll done!", "text after Act: finish"),
    ("Think: Done.\nAct: run ls", "unknown action (not bash, answer(...) or finish)"),
]


@pytest.mark.parametrize("reply", BASH_OK)
def test_bash_example_checker_accepts(reply):
    check = get_checker(BASH_CHECKS)(reply)
    assert check.ok, check


@pytest.mark.parametrize("reply,reason", BASH_BAD)
def test_bash_example_checker_rejects_with_reason(reply, reason):
    _fails(get_checker(BASH_CHECKS), reply, reason)


def test_bash_example_checker_accepts_every_demonstration_of_the_example_prompt():
    checker = get_checker(BASH_CHECKS)
    agent_turns = [m["content"] for m in load_prompt(BASH_PROMPT).demonstrations if m["role"] == "assistant"]
    assert len(agent_turns) >= 5
    for turn in agent_turns:
        assert checker(turn).ok, (turn, checker(turn))


GOOD_JSON = '{"category": "delays", "priority": "normal", "answer": "You can claim 25% in the app.", "escalate": false}'

JSON_BAD = [  # reply, the reason json_shape gave when it was library code, the schema's reason
    ("", "empty reply", "empty reply"),
    ("```json\n" + GOOD_JSON + "\n```", "code fence around the JSON", "code fence around the JSON"),
    ("Here is my answer: " + GOOD_JSON, "text around the JSON object", "text around the JSON"),
    (GOOD_JSON + "\nHope this helps!", "text around the JSON object", "text around the JSON"),
    ("category: delays", "not valid JSON", "not valid JSON"),
    ('["delays", "normal"]', "JSON is not an object", "$: type"),
    ('{"category": "delays", "priority": "normal", "answer": "x"}', "missing key", "$: required"),
    ('{"category": "delays", "priority": "normal", "answer": "x", "escalate": false, "refund": 3}', "extra key",
     "$: additionalProperties"),
    ('{"category": "delays", "urgency": "normal", "answer": "x", "escalate": false}', "wrong keys", "$: required"),
    ('{"priority": "normal", "category": "delays", "answer": "x", "escalate": false}', "keys out of order",
     "$: key order"),
    ('{"category": "delays", "category": "other", "priority": "normal", "answer": "x", "escalate": false}',
     "duplicate key", "$: duplicate key"),
    ('{"category": "trains", "priority": "normal", "answer": "x", "escalate": false}', "category not allowed",
     "$.category: enum"),
    ('{"category": "delays", "priority": "urgent", "answer": "x", "escalate": false}', "priority not allowed",
     "$.priority: enum"),
    ('{"category": "delays", "priority": "normal", "answer": " ", "escalate": false}',
     "answer not a non-empty string", "$.answer: pattern"),
    ('{"category": "delays", "priority": "normal", "answer": "x", "escalate": "false"}', "escalate not a boolean",
     "$.escalate: type"),
    # the placeholder object the support prompt itself shows is not a valid reply (both enums fail)
    ('{"category": "...", "priority": "...", "answer": "...", "escalate": false}', "category not allowed",
     "$.priority: enum"),
]


def test_support_example_schema_accepts():
    checker = get_checker(SUPPORT_SCHEMA)
    assert checker(GOOD_JSON).ok
    assert checker("\n" + GOOD_JSON.replace("false", "true") + "\n").ok


@pytest.mark.parametrize("reply,old_reason,reason", JSON_BAD)
def test_support_example_schema_rejects_what_json_shape_rejected(reply, old_reason, reason):
    _fails(get_checker(SUPPORT_SCHEMA), reply, reason)
