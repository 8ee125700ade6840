"""The protocol of json_tools.txt as a checker: ``--checker examples/unseen/json_tools.checks.py:protocol``.

Written from the prompt alone, before any model reply to it was read.
"""

import json

_TOOLS = {
    "get_inventory": {"location"},
    "search_recipes": {"ingredients", "max_minutes"},
    "add_to_shopping_list": {"items"},
    "remove_from_shopping_list": {"items"},
    "set_timer": {"label", "minutes"},
}


def protocol(reply: str) -> tuple[bool, str]:
    """Exactly one JSON object: ``{"tool": <listed tool>, "arguments": {<its arguments>}}`` or ``{"final": str}``."""
    text = reply.strip()
    if not text:
        return False, "empty reply"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False, "not one JSON value"
    if not isinstance(value, dict):
        return False, "JSON but not an object"
    if set(value) == {"final"}:
        return (True, "") if isinstance(value["final"], str) and value["final"].strip() else (False, "empty final")
    if set(value) != {"tool", "arguments"}:
        return False, "keys are neither tool+arguments nor final"
    if value["tool"] not in _TOOLS:
        return False, "unknown tool"
    if not isinstance(value["arguments"], dict):
        return False, "arguments not an object"
    if set(value["arguments"]) != _TOOLS[value["tool"]]:
        return False, "wrong arguments for the tool"
    return True, ""
