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
"""


def _cmd_synth(args) -> int:
    from genpi.synth.pipeline import synthesize

    synthesize(from_args(SynthConfig, args))
    return 0


def _cmd_models_fetch(args) -> int:
    from genpi.models import fetch_default_model

    print(fetch_default_model(install=True))
    return 0


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

    p = sub.add_parser("models", help="manage the embedded default model")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    f = msub.add_parser("fetch", help="install the default model (SmolLM2-135M-Instruct) and convert it once")
    f.set_defaults(func=_cmd_models_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"genpi: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genpi: interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
