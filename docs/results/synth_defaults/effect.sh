#!/usr/bin/env bash
# The effect of b809d0a's synthesis stops on what the adapter learns: genpi train's defaults on the new run
# (runs/yield/NAME) against the unseen2 adapter trained with the same defaults on the old run of the same inputs,
# both scored in one genpi eval on the unseen2 held-out inputs.
set -euo pipefail
export HF_HUB_OFFLINE=1
for name in "$@"; do
  old=/work/wt-u2/runs/unseen2/$name
  echo "=== $name $(date -u +%T)"
  genpi train --data runs/yield/$name --out runs/yield/$name-adapter
  genpi eval --prompt examples/unseen/$name.txt --inputs $old/heldout --adapter runs/yield/$name-adapter \
    --baseline $old/genpi_kl --checker examples/unseen/$name.checks.py:protocol --out runs/yield/$name-report
  echo "=== $name done $(date -u +%T)"
done
