"""The ``genpi`` command: a thin shell over functions that recipes and tests call directly.

Heavy imports (torch, transformers) happen inside the commands, so ``genpi --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from genpi import __version__
from genpi.config import SynthConfig, add_arguments, from_args
from genpi.errors import UserError

EPILOG = """examples:
  genpi models fetch
  genpi synth --prompt examples/bash_agent.txt --out runs/bash --num-inputs 200 --max-turns 4
  genpi synth --prompt agent.txt --base-url http://localhost:8000/v1 --model meta-llama/Llama-3.1-8B-Instruct --out runs/x
  genpi train --data runs/bash --strategy genpi --out adapters/bash
  genpi eval --prompt examples/bash_agent.txt --inputs runs/bash-heldout --adapter adapters/bash --out reports/bash
  genpi serve --adapter adapters/bash
  genpi run recipes/quickstart.py
"""


def _cmd_synth(args) -> int:
    from genpi.synth.pipeline import synthesize

    synthesize(from_args(SynthConfig, args))
    return 0


def _cmd_run(args) -> int:
    import importlib.util
    from pathlib import Path

    path = Path(args.recipe)
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"recipe {path} is not a Python file: pass a file such as recipes/quickstart.py")
    spec = importlib.util.spec_from_file_location(f"genpi_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise UserError(f"recipe {path} has no main(argv) function: see recipes/quickstart.py for the shape")
    module.main(args.recipe_args)
    return 0


def _cmd_models_fetch(args) -> int:
    from genpi.models import fetch_default_model

    print(fetch_default_model(install=True))
    return 0


def _cmd_eval(args) -> int:
    from genpi.config import EvalConfig
    from genpi.eval.evaluate import evaluate

    args.adapter, args.baseline = args.adapter or [], args.baseline or []
    evaluate(from_args(EvalConfig, args))
    return 0


EVAL_EPILOG = """examples:
  genpi eval --prompt examples/bash_agent.txt --inputs runs/bash-heldout --adapter adapters/bash --out reports/bash --checker examples/bash_agent.checks.py:protocol
  genpi eval --prompt examples/support_agent.txt --inputs my_traffic.jsonl --adapter adapters/support --baseline adapters/support-seqkd --checker examples/support_agent.schema.json
"""


def _add_eval_parser(sub) -> None:
    from genpi.config import EvalConfig

    p = sub.add_parser(
        "eval",
        help="compare the prompted, unprompted and internalized systems on held-out inputs",
        description="Answer held-out inputs with the base model and the full prompt (upper bound), the base model "
        "without it (lower bound), each adapter without it, and each baseline; score fidelity to the prompted "
        "teacher, protocol compliance, multi-turn fidelity, prompt reconstruction, recovery ratios and cost; write "
        "report.json, report.png and outputs.jsonl under --out.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, EvalConfig, skip=("adapter", "baseline"))
    # Repeatable flags: argparse appends to a fresh list (default None), never to a shared default.
    p.add_argument("--adapter", action="append", default=None, metavar="DIR",
                   help="adapter directory from `genpi train`, answering without the prompt (repeatable)")
    p.add_argument("--baseline", action="append", default=None, metavar="DIR",
                   help="adapter trained with another strategy, labelled by its strategy (repeatable)")
    p.set_defaults(func=_cmd_eval)


def _cmd_train(args) -> int:
    from genpi.config import TrainConfig
    from genpi.training import train

    train(from_args(TrainConfig, args))
    return 0


def _cmd_export(args) -> int:
    from genpi.export import export

    print(export(args.adapter, args.out, merge=args.merge, overwrite=args.overwrite))
    return 0


TRAIN_EPILOG = """examples:
  genpi train --data runs/bash --strategy genpi --out adapters/bash
  genpi train --data runs/bash --strategy seqkd_kl --model HuggingFaceTB/SmolLM2-135M-Instruct --out adapters/bash-kl
  genpi train --data runs/bash --strategy genpi --w-pg 0.5 --max-steps 200 --out adapters/bash --resume
  genpi train --data runs/bash --strategy promptintern --intern-rates 1,0.5,0 --intern-shots 2,1,0 --out adapters/bash-pi
  genpi train --data runs/bash --strategy onpolicy --w-sft 0.7 --w-pg 0.3 --out adapters/bash-op   # mixed with GenPI
  genpi train --data runs/bash --strategy kv_prefix --out adapters/bash-kv      # cannot be merged: a soft prompt
  genpi train --data runs/bash --out adapters/bash --training-args '{"report_to": "tensorboard"}'
  accelerate launch -m genpi train --data runs/bash --strategy genpi --out adapters/bash   # several processes
"""
EXPORT_EPILOG = """examples:
  genpi export --adapter adapters/bash --merge --out models/bash-merged
  genpi export --adapter adapters/bash --out serve/bash   # the adapter alone, for vLLM multi-LoRA serving
"""
SERVE_EPILOG = """examples:
  genpi serve --adapter adapters/bash
  genpi serve --adapter adapters/bash --adapter adapters/support --port 8001
  genpi serve --adapter bash=adapters/bash --prompt bash-prompted=examples/bash_agent.txt
  curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "bash", "messages": [{"role": "user", "content": "How many files are in /etc?"}]}'
  curl -N http://127.0.0.1:8000/v1/chat/completions -d '{"model": "bash", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'

reference: docs/SERVING.md (streaming, n, logprobs, errors, cancellation, overload, vLLM multi-LoRA)
"""


def _add_train_parsers(sub) -> None:
    from genpi.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train an adapter on a synthesis run (GenPI joint loss, a baseline, or another method)",
        description="Train an adapter on a synthesis run with a strategy preset: genpi (behaviour + prompt "
        "generation), seqkd (behaviour only), seqkd_kl / genpi_kl (plus a KL term to the prompted base model), "
        "prepend (the prompt kept in context), promptintern (the prompt compressed away in stages), onpolicy "
        "(reverse KL on the student's own samples), or a soft prompt in place of the prompt: prompt_tuning "
        "(virtual token embeddings) or kv_prefix (a trained KV prefix). Writes a PEFT adapter, genpi.json and "
        "loss.png to --out (docs/TRAINING.md).",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "export",
        help="export a trained adapter, merged into its base model or alone",
        description="Copy a trained adapter without its checkpoints, or with --merge fold it into the base model "
        "and write a full model directory that loads without PEFT.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory from `genpi train`")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base model's weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_cmd_export)


def _cmd_serve(args) -> int:
    from genpi.serving.server import serve

    serve(args.adapter, args.model, args.host, args.port, args.rows, args.served_name, args.max_waiting,
          args.prompt, args.merge, args.threads)
    return 0


def _add_serve_parser(sub) -> None:
    from genpi.serving.server import add_arguments as add_serve_arguments

    p = sub.add_parser(
        "serve",
        help="serve internalized agents on an OpenAI-compatible endpoint",
        description="Serve the base model, each --adapter (per request over one copy of the base, or merged "
        "with --merge) and each --prompt at /v1/chat/completions (an adapter's model name is NAME or its "
        "directory's name), with the student context it was trained with. Stops at once on Ctrl-C or SIGTERM. For many adapters on a GPU, see the vLLM "
        "multi-LoRA command in docs/SERVING.md.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genpi",
        description="Internalize a long agent prompt into a LoRA adapter: synthesize, train, evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"genpi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "synth",
        help="synthesize role-swapped dialogues from one prompt",
        description="From one agent prompt, synthesize user inputs, AS-IS/TO-BE answers, reasons and role-swapped "
        "dialogues into a resumable run directory. Without --base-url (or $OPENAI_BASE_URL), an embedded "
        "local server with the default tiny model is started and stopped.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, SynthConfig)
    p.set_defaults(func=_cmd_synth)

    _add_train_parsers(sub)

    _add_eval_parser(sub)

    _add_serve_parser(sub)

    p = sub.add_parser(
        "run",
        help="run a recipe file: synth -> train -> eval in one experiment",
        description="Run a Python recipe file (its main(argv)); arguments after the file go to the recipe.",
        epilog="examples:\n  genpi run recipes/quickstart.py\n  genpi run recipes/quickstart.py --smoke --out runs/ci\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="path of the recipe file")
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments passed to the recipe's main()")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("models", help="manage the embedded default model")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    f = msub.add_parser("fetch", help="install the default model (SmolLM2-135M-Instruct) and convert it once")
    f.set_defaults(func=_cmd_models_fetch)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, schedulers and containers send), handled like Ctrl-C: stop now, clean up."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except UserError as e:
        print(f"genpi: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"genpi: {how}; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
