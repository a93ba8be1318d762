# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to releases that admit the project's range
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench soak venv clean system-test-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Optional system tools the tests use when present (systemd-analyze, chromium);
# best effort: tests skip with a reason when a tool is missing.
system-test-deps:
	@bash scripts/install-test-tools.sh || true

demo: $(VENV)/.installed
	$(BIN)/python -m inspector.cli.demo

test: $(VENV)/.installed-test system-test-deps
	$(BIN)/python -m pytest -q -ra

bench: $(VENV)/.installed
	$(BIN)/python bench/run_all.py

soak: $(VENV)/.installed-test
	INSPECTOR_SOAK=1 $(BIN)/python -m pytest -q -ra tests/reliability

clean:
	rm -rf $(VENV) demo-run .pytest_cache
