# One command sets up a fresh machine; the README's quick start is `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
# pip >= 25 refuses the Merlin packages (direct-URL dependencies in their extras).
PIP_VERSION := 24.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test clean test-deps

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev]'
	# Only the tritonserver binary, libraries and backend stubs of this wheel are used;
	# its Python dependencies conflict with the Merlin pins (see README).
	$(BIN)/pip install -q --no-deps -c requirements/constraints.txt nvidia-pytriton
	# perf_analyzer: the real binary ships in the tritonclient 2.51 wheel (see README, Load tests).
	$(BIN)/python -m build_ensemble.loadtest.perf_analyzer install
	touch $@

demo: setup
	$(BIN)/build-ensemble demo

# The Redis tests start a real redis-server (Debian package); a missing one fails them.
test-deps:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else sudo apt-get install -y -qq redis-server; fi; }

# lint-imports: the import contracts in pyproject.toml (serving imports no build module; layers).
test: setup test-deps
	$(BIN)/lint-imports
	$(BIN)/pytest

clean:
	rm -rf artifacts model_repository/*/ feature_repo/data .serve
