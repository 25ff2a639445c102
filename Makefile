# The two commands: `make lab` starts the lessons, `make test` runs every test.
# Both set up what a fresh machine needs first (scripts/setup.sh; safe to re-run).

VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888
TOKEN ?=
HANDOUTS ?= handouts
HANDOUTS_FLAGS ?= --pdf

.PHONY: setup lab handouts test test-wheel test-vm lint check clean

setup:
	@bash scripts/setup.sh

# scripts/lab.sh runs the set-up, installs the root kernel, prints the address with its token.
lab:
	@PORT=$(PORT) TOKEN=$(TOKEN) bash scripts/lab.sh

# Every lesson executed, with its plots, as HTML (and PDF where Chromium is) in $(HANDOUTS)/.
handouts: setup
	$(VENV)/bin/ebpfkit handouts $(HANDOUTS) $(HANDOUTS_FLAGS)

check: setup
	$(VENV)/bin/ebpfkit check

lint: setup
	$(VENV)/bin/ruff check ebpfkit tests scripts benchmarks
	$(VENV)/bin/ruff format --check ebpfkit tests scripts benchmarks

# Unit and real-kernel tests, the notebooks under nbval, an ordinary install of the wheel,
# then the kprobe lane.
test: setup lint
	$(PY) scripts/leftovers.py snapshot .leftovers.json
	$(PY) -m pytest -q -p no:cacheprovider tests
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks; \
	fi
	$(PY) scripts/leftovers.py check .leftovers.json
	bash scripts/wheel-check.sh
	bash scripts/vm-lane.sh

# The wheel alone: built, installed into a new virtualenv, run from an unrelated folder.
test-wheel: setup
	bash scripts/wheel-check.sh

# The kprobe lane alone: a stock Debian kernel with kprobes, booted in a virtual machine.
test-vm: setup
	bash scripts/vm-lane.sh

clean:
	rm -rf $(VENV) .pytest_cache
