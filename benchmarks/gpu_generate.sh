#!/usr/bin/env bash
# LLM decoding on one GPU (issue "Fast LLM answers"): benchmarks/bench_generate.py for SmolLM2-135M's
# shape and Llama-3-8B's shape, random-init bf16 (same arithmetic as the real weights, which need
# not travel), eager and compiled. On the GPU machine (device tool), from the project root, carry
# [".whl", ".smol-tok"] where .whl is made by ../shared/tools/device-wheels.sh and .smol-tok holds the
# small files of the pulled SmolLM2 (config.json, tokenizer*, chat_template.jinja, generation_config.json):
#
#   bash benchmarks/gpu_generate.sh [smollm2|llama3-8b|all]
#
# Everything goes to $OUT (JSON per run, plus the logs).
set -uo pipefail
OUT=${OUT:-bench_out}
WHAT=${1:-all}
mkdir -p "$OUT"
SITE=${SITE:-/root/site}  # kept between the calls of one warm machine
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 1; }
fi
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,driver_version --format=csv,noheader
bench() { # name timeout args...
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  timeout "$limit" python3 benchmarks/bench_generate.py --device cuda --set generator.model=.smol-tok --out "$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
  echo "rc=$?"; grep -E "^  |^\|" "$OUT/$name.log" | grep -v "^|---" | tail -14
}
if [ "$WHAT" = smollm2 ] || [ "$WHAT" = all ]; then
  bench smollm2_cuda_eager 150 --shape .smol-tok --label smollm2-135m --prompt-tokens 1000 --new-tokens 128 --batch 1,32 --repeats 3
  bench smollm2_cuda_compiled 240 --shape .smol-tok --label smollm2-135m --prompt-tokens 1000 --new-tokens 128 --batch 1,8,32 --repeats 3 --compile
fi
if [ "$WHAT" = llama3-8b ] || [ "$WHAT" = all ]; then
  bench llama3_8b_cuda_compiled 300 --shape llama3-8b --tokenizer .smol-tok --prompt-tokens 1500 --new-tokens 128 --batch 1,8 --repeats 2 --compile
fi
