#!/usr/bin/env bash
# The "make it fast" GPU measurements in one command: title-embedding throughput, then QLoRA
# fine-tuning throughput (project pipeline variants vs the plain transformers+peft+bnb loop).
#
# On the GPU machine (device tool), from the project root, with the wheels in .whl (made by
# ../shared/tools/device-wheels.sh) and the bundled model's small files in .embedtok (see
# docs/performance-gpu.md), carry [".whl", ".embedtok"]:
#
#   [EMBED_ARGS=--quick] [CHILD_TIMEOUT=150] bash benchmarks/gpu_perf.sh [EMBED_SECONDS FINETUNE_SECONDS "MODE:BATCH:GC ..."]
#
# Everything goes to $OUT (at most 8 files come back, so the fine-tuning logs are one tarball).
# Each stage runs under `timeout`, so the script always reaches the tarball even when one stalls.
set -uo pipefail
OUT=${OUT:-bench_out}
EMBED_S=${1:-120}
FT_S=${2:-400}
MODES=${3:-"pipeline:16:true pipeline:4:false plain:16 pipeline:16:unsloth pipeline:2:false"}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,driver_version --format=csv,noheader

if [ "$EMBED_S" != 0 ]; then
  echo "=== embedding (timeout ${EMBED_S}s)"
  timeout "$EMBED_S" python3 benchmarks/bench_embed_gpu.py --tokenizer-dir .embedtok --titles 200000 --out "$OUT" ${EMBED_ARGS:-} \
    >"$OUT/embed.log" 2>&1
  echo "embed rc=$?"
  grep -E "^(family=|tokenised|[0-9]+ titles|raw |st |NVIDIA|torch.compile)" "$OUT/embed.log" | tail -30
fi

if [ "$FT_S" != 0 ]; then
  echo "=== fine-tuning (timeout ${FT_S}s): $MODES"
  mkdir -p /tmp/ftout
  # shellcheck disable=SC2086
  timeout "$FT_S" python3 benchmarks/bench_finetune_gpu.py --shapes llama3-8b --modes $MODES --out /tmp/ftout \
    --child-timeout ${CHILD_TIMEOUT:-150} >"$OUT/finetune.log" 2>&1
  echo "finetune rc=$?"
  grep -E "^\[|tok/s|FAILED|best pipeline|^llama3|^shape|OutOfMemory|Error" "$OUT/finetune.log" | tail -40
  # runs that finished before a timeout still left their JSON; show them whatever happened to the summary
  for f in /tmp/ftout/*.json; do [ -e "$f" ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); \
print(sys.argv[1].split('/')[-1], round(r.get('tokens_per_s', 0)), 'tok/s', round(r.get('peak_allocated_gib', 0), 2), 'GiB')" "$f" 2>/dev/null; done
  tar czf "$OUT/finetune_runs.tgz" -C /tmp/ftout . 2>/dev/null
fi
