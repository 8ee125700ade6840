"""Action agreement: does a system *do* what the prompted teacher does, not only write in its format?

A checker may name what a passing reply does (genpi.checkers, ``Check.action``). On every held-out input where
the teacher's reply has an action, a system agrees when its own reply's action is the same:

* ``action``: every named field equal (for the bash example: the action and its command or answer);
* ``action_name``: the field ``action`` alone (which kind of action), when the checker names one.

Inputs where the teacher's reply has no action (it failed the checker) are left out, for every system alike.

Exact agreement compounds over an action's tokens, and two different commands can do the same thing. With
``--tasks``, :func:`execution_agreement` runs the first command of the system's and of the teacher's first turn on
each task in two fresh sandboxes prepared by the task's setup: they agree when both exit alike and print the same.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def action_scores(checks: dict[str, list], teacher: str = "prompted") -> dict[str, dict[str, list[float]]]:
    """``{system: {"action": [...], "action_name": [...]}}`` from each system's per-reply checks (same items, in
    order), over the items where the teacher's reply has an action; empty when the checker names no actions."""
    reference = checks[teacher]
    items = [i for i, c in enumerate(reference) if c.ok and c.action]
    if not items:
        return {}
    named = all("action" in reference[i].action for i in items)
    out = {}
    for name, cs in checks.items():
        scores = {"action": [float(bool(cs[i].ok and cs[i].action == reference[i].action)) for i in items]}
        if named:
            scores["action_name"] = [float(bool(cs[i].ok and cs[i].action and
                                                 cs[i].action.get("action") == reference[i].action["action"]))
                                     for i in items]
        out[name] = scores
    return out


def _outcome(task, command: str | None, limits, backend: str):
    """``(exit code, output)`` of ``command`` in a fresh sandbox after ``task``'s setup; None when there is no
    command or the setup failed."""
    from genpi.eval.tasks import prepare
    from genpi.sandbox import Sandbox

    if command is None:
        return None
    with Sandbox(limits, backend=backend) as box:
        _, error = prepare(box, task)
        if error:
            return None
        done = box.run(command)
        return done.exit_code, done.text()


def execution_agreement(tasks: list, first_turns: dict[str, list[str]], limits, backend: str,
                        teacher: str = "prompted") -> dict[str, list[float]]:
    """``{system: [1.0 when its command's result equals the teacher's, per task]}`` over the tasks whose teacher
    turn runs a command that completes; ``first_turns`` holds each system's first agent turn per task.

    The teacher's command runs twice: its own row is whether the second run repeats the first, the ceiling that
    commands with varying output (dates, process ids) leave.
    """
    from genpi.environment import find_command

    commands = {name: [find_command(t) for t in turns] for name, turns in first_turns.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:  # sandboxes mostly wait: run a few at once
        def run(cs):
            return list(pool.map(lambda k: _outcome(tasks[k], cs[k], limits, backend), range(len(tasks))))

        reference = run(commands[teacher])
        results = {name: run(cs) for name, cs in commands.items()}
    items = [k for k, r in enumerate(reference) if r is not None]
    return {name: [float(rs[k] is not None and rs[k] == reference[k]) for k in items] for name, rs in results.items()}
