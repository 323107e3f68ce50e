# Two commands do all set-up on a fresh Debian 12 machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch first: its pinned CPU wheel keeps pip from pulling the CUDA build (users bring their own).
TORCH ?= torch==2.13.0

.PHONY: install demo test lint suricata chromium clean

$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/python -m semiflow.demo

lint: install
	$(BIN)/ruff check .

# Suricata 7 from bookworm-backports for the Suricata tests (they skip, saying why, without it).
suricata:
	@sh ci/install-suricata.sh || \
		echo "warning: could not install Suricata 7; its tests will be skipped"

# Debian's Chromium for the report's headless-browser test (skips, saying why, without it).
chromium:
	@bash ci/install-chromium.sh || \
		echo "warning: could not install Chromium; the report browser test will be skipped"

test: install lint suricata chromium
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache
