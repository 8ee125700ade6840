#!/usr/bin/env bash
# The README's commands with every default on the prompts of examples/unseen (no seed inputs), once with the
# default strategy (genpi) and once with --strategy genpi_kl, both scored in one genpi eval.
set -euo pipefail
export HF_HUB_OFFLINE=1
for name in "$@"; do
  p=examples/unseen/$name.txt; r=runs/unseen2/$name
  echo "=== $name $(date -u +%T)"
  /work/venv-u2/bin/genpi synth --prompt $p --out $r/train --num-inputs 16
  /work/venv-u2/bin/genpi synth --prompt $p --out $r/heldout --inputs-only --exclude-run $r/train --seed 1 --num-inputs 16
  /work/venv-u2/bin/genpi train --data $r/train --out $r/genpi
  /work/venv-u2/bin/genpi train --data $r/train --out $r/genpi_kl --strategy genpi_kl
  /work/venv-u2/bin/genpi eval --prompt $p --inputs $r/heldout --adapter $r/genpi --baseline $r/genpi_kl --checker examples/unseen/$name.checks.py:protocol --out $r/report
  echo "=== $name done $(date -u +%T)"
done
