#!/usr/bin/env bash
# README defaults (no --checker) on the two plain unseen prompts and the support example, at main's synthesis
set -euo pipefail
cd /work/main
export HF_HUB_OFFLINE=1
for name in json_tools support_persona; do
  echo "=== $name $(date -u +%T)"
  genpi synth --prompt examples/unseen/$name.txt --out runs/yield/$name --num-inputs 16
done
echo "=== support_agent $(date -u +%T)"
genpi synth --prompt examples/support_agent.txt --out runs/yield/support_agent --num-inputs 16
echo "=== bash_agent $(date -u +%T)"
genpi synth --prompt examples/bash_agent.txt --out runs/yield/bash_agent --num-inputs 16
echo "=== done $(date -u +%T)"
