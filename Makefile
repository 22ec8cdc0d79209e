# The two commands that matter: `make demo` and `make test`. Both build .venv on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint serve check-config bench soak screenshots clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sip-controller needs Python 3.11+ (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sipctl demo

# the suite mostly waits (timers, servers, child processes): four processes, a test file each at a time; then the
# tests marked serial in this one (schemathesis's cases share a node id, which pytest-xdist would run only once)
test: $(STAMP)
	$(BIN)/python -m pytest -n 4 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -m serial

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy sip_controller tests

serve: $(STAMP)
	$(BIN)/sipctl serve

bench: $(STAMP)
	$(BIN)/sipctl bench

soak: $(STAMP)
	$(BIN)/sipctl soak --calls 1000

# the README's console screenshots (docs/screenshots/*.png): headless Chromium (apt-get install chromium chromium-driver)
screenshots: $(STAMP)
	$(BIN)/python -m sip_controller.simulator.screenshots docs/screenshots

check-config: $(STAMP)
	$(BIN)/sipctl check-config --print-accept

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
