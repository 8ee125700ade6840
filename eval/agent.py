"""Task success: each system works every task as a multi-turn agent, each task in a fresh sandbox of its own.

Per system, all tasks advance together, one agent turn at a time (the turns of all open tasks are decoded as one
batch). A turn that gives an answer, or that ends the task by the prompt's end pattern (e.g. ``Act: finish``),
closes it; a turn with a command gets the sandbox's output back as the next user turn, in the prompt's
environment format; a turn with neither closes the task as "no action". After ``max_turns`` agent turns a task
is closed as it stands. Then its check decides (genpi.eval.tasks).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from genpi.environment import find_answer, find_command, reply_text
from genpi.eval.tasks import Outcome, Task, judge, prepare
from genpi.sandbox import Limits, Sandbox


def work_tasks(gen, system, prompt, tasks: list[Task], *, max_turns: int, max_new_tokens: int, stop: list[str],
               end_pattern: str, answer_pattern: str, opener: str, output_chars: int, limits: Limits,
               backend: str, on_turn=None) -> list[Outcome]:
    """One :class:`Outcome` per task, in order, for ``system`` (a genpi.eval.systems.System run by ``gen``)."""
    from genpi.synth.episodes import ends_task

    boxes = [Sandbox(limits, backend=backend) for _ in tasks]
    outcomes: list[Outcome | None] = [None] * len(tasks)
    expected: list[str | None] = [None] * len(tasks)
    answers: list[str | None] = [None] * len(tasks)
    endings = [""] * len(tasks)  # why the agent stopped: "", "no action" or "turn limit"
    convs = [[{"role": "user", "content": t.request}] for t in tasks]
    with ThreadPoolExecutor(max_workers=4) as pool:  # sandboxes start and run in parallel: mostly waiting
        try:
            def start(i):
                boxes[i].start()
                expected[i], error = prepare(boxes[i], tasks[i])
                if error:
                    outcomes[i] = Outcome(tasks[i].id, False, "setup failed", detail=error)

            list(pool.map(start, range(len(tasks))))
            open_ = [i for i in range(len(tasks)) if outcomes[i] is None]
            for _ in range(max_turns):
                if not open_:
                    break
                replies = gen.generate(system, prompt, [convs[i] for i in open_], max_new_tokens, stop=stop)
                commands = {}
                for i, g in zip(open_, replies):
                    convs[i].append({"role": "assistant", "content": g.text})
                    answer = find_answer(g.text, answer_pattern)
                    if answer is not None:
                        answers[i] = answer
                    elif not ends_task(g.text, end_pattern):
                        command = find_command(g.text)
                        if command is None:
                            endings[i] = "no action"
                        else:
                            commands[i] = command
                actions = dict(zip(commands, pool.map(lambda i: boxes[i].run(commands[i]), commands)))
                for i, action in actions.items():
                    convs[i].append({"role": "user", "content": reply_text(action, opener, output_chars)})
                open_ = list(actions)
                if on_turn:
                    on_turn()
            for i in open_:
                endings[i] = "turn limit"

            def finish(i):
                if outcomes[i] is None:
                    ok, reason = judge(boxes[i], tasks[i], expected[i], answers[i])
                    if not ok and endings[i] and (tasks[i].asks_answer or endings[i] == "no action"):
                        reason = endings[i]  # the agent stopped before answering: say why
                    outcomes[i] = Outcome(tasks[i].id, ok, reason, answers[i], expected[i], convs[i][1:])

            list(pool.map(finish, range(len(tasks))))
        finally:
            for box in boxes:
                box.close()
    return outcomes
