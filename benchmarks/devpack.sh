#!/usr/bin/env bash
# Pack what a GPU build run needs into ./.devpack (about 50 MB: one device call carries 64 MiB):
#   .devpack/minilm.tar.xz  the bundled MiniLM as a SentenceTransformer directory in fp16 (.minilm)
#   .devpack/faiss.tar.xz   faiss-cpu installed for the device's python (the one wheel it lacks)
# xz takes the two from 45 + 18.8 MB (which, with the working tree, overflow one call) to 41 + 9.4 MB.
#
#   bash benchmarks/devpack.sh          # here, once; .devpack/ and .minilm/ stay untracked
# then one device call, carry [".devpack"]:
#   mkdir -p /root/site /root/keep && tar -xJf .devpack/faiss.tar.xz -C /root/site \
#     && tar -xJf .devpack/minilm.tar.xz -C /root/keep && MODEL=/root/keep/.minilm bash benchmarks/gpu_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .devpack
if [ ! -f .minilm/modules.json ]; then
  "$PY" - <<'PY'
from sentence_transformers import SentenceTransformer
from index.model_paths import resolve_model_path
SentenceTransformer(str(resolve_model_path("bundled:all-MiniLM-L6-v2")), device="cpu").half().save(".minilm")
PY
fi
tar -cJf .devpack/minilm.tar.xz .minilm
version=$("$PY" -c "import faiss; print(faiss.__version__)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp/wheel" "faiss-cpu==$version"
"$PY" -m pip install -q --no-deps --no-compile --target "$tmp/site" "$tmp"/wheel/*.whl
tar -cJf .devpack/faiss.tar.xz -C "$tmp/site" .
ls -l .devpack
