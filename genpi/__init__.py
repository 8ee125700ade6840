"""genpi: internalize a long agent prompt into a small adapter (Generative Prompt Internalization).

The three stages, from Python::

    from genpi import SynthConfig, TrainConfig, EvalConfig, synthesize, train, evaluate

    run = synthesize(SynthConfig(prompt="agent.txt", out="runs/agent"))          # -> Path of the run
    adapter = train(TrainConfig(data=run, out="adapters/agent"))                 # -> Path of the adapter
    report = evaluate(EvalConfig(prompt="agent.txt", inputs="heldout.txt", adapter=[adapter]))  # -> Path

Names are imported on first use, so ``import genpi`` stays instant (torch loads with the first stage).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "SynthConfig": "genpi.config",
    "TrainConfig": "genpi.config",
    "EvalConfig": "genpi.config",
    "synthesize": "genpi.synth.pipeline",
    "train": "genpi.training.run",
    "train_resumably": "genpi.training.run",
    "evaluate": "genpi.eval.evaluate",
    "serve": "genpi.serving.server",
    "AgentPrompt": "genpi.prompt",
    "load_prompt": "genpi.prompt",
    "RunInfo": "genpi.synth.store",
    "load_run": "genpi.synth.store",
    "AdapterInfo": "genpi.adapter",
    "UserError": "genpi.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genpi' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
