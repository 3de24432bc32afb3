#!/usr/bin/env bash
# Starts vLLM (scripts/setup_vllm.sh's CPU build; on a GPU machine any vLLM 0.32 on PATH via
# VLLM_BIN) the way rl-zero's trainer needs it: token-id completions with raw log-probs, no
# model-supplied sampling defaults, the dev routes a weight sync calls, and the worker extension
# that reloads tied embeddings (scripts/vllm/rlz_vllm_ext.py). See docs/rollout.md.
#
# Usage: bash scripts/vllm/serve.sh HF_DIR [PORT] [SERVED_NAME]   (defaults: 8000, policy)
#   HF_DIR: e.g. `rl-zero export --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --out DIR`
# Env: VLLM_BIN (default: the setup_vllm.sh install), VLLM_MAX_MODEL_LEN (default 2048),
#      VLLM_DTYPE (default float32), extra `vllm serve` arguments after the positional ones.
# The routes VLLM_SERVER_DEV_MODE exposes are unauthenticated: it binds to 127.0.0.1.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:?usage: serve.sh HF_DIR [PORT] [SERVED_NAME]}
port=${2:-8000}
name=${3:-policy}
shift $(( $# < 3 ? $# : 3 ))
bin=${VLLM_BIN:-$(bash "$repo/scripts/setup_vllm.sh")}
export VLLM_SERVER_DEV_MODE=1
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export PYTHONPATH="$repo/scripts/vllm${PYTHONPATH:+:$PYTHONPATH}"
exec "$bin" serve "$dir" --host 127.0.0.1 --port "$port" --served-model-name "$name" \
  --dtype "${VLLM_DTYPE:-float32}" --max-model-len "${VLLM_MAX_MODEL_LEN:-2048}" \
  --enforce-eager --logprobs-mode raw_logprobs --generation-config vllm \
  --worker-extension-cls rlz_vllm_ext.TiedReloadExtension "$@"
