# Two commands do all set-up on a fresh Debian 12 machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch first: its pinned CPU wheel keeps pip from pulling the CUDA build (users bring their own).
TORCH ?= torch==2.13.0

.PHONY: install demo test lint suricata chromium lab lab-packages clean

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

# The traffic lab's Debian packages (servers, clients, attack tools) for its test and `make lab`.
lab-packages:
	@sh benchmarks/lab/install.sh || \
		echo "warning: could not install the lab's packages; the lab test will be skipped"

# Two lab runs (root, network namespaces): a benign-only training capture and a mixed test
# capture with every attack family, different seeds. About 40 minutes on 2 cores.
LAB_MINUTES ?= 15
LAB_CLIENTS ?= 8
LAB_OUT ?= lab-out
lab: install
	sh benchmarks/lab/install.sh
	cd benchmarks && ../$(BIN)/python -m lab.run --scenario train-benign --seed 1 \
		--minutes $(LAB_MINUTES) --clients $(LAB_CLIENTS) -o ../$(LAB_OUT)/train-benign
	cd benchmarks && ../$(BIN)/python -m lab.run --scenario test-mixed --seed 2 \
		--minutes $(LAB_MINUTES) --clients $(LAB_CLIENTS) -o ../$(LAB_OUT)/test-mixed
	cd benchmarks && ../$(BIN)/python -m lab.summary ../$(LAB_OUT)/train-benign ../$(LAB_OUT)/test-mixed

test: install lint suricata chromium lab-packages
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache
