# The two commands: `make lab` starts the lessons, `make test` runs every test.
# Both set up what a fresh machine needs first (scripts/setup.sh; safe to re-run).

VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888

.PHONY: setup lab test test-vm lint check clean

setup:
	@bash scripts/setup.sh

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) \
	  --allow-root --no-browser --ServerApp.open_browser=False

check: setup
	$(VENV)/bin/ebpfkit check

lint: setup
	$(VENV)/bin/ruff check ebpfkit tests
	$(VENV)/bin/ruff format --check ebpfkit tests

# Unit and real-kernel tests, the notebooks under nbval, then the kprobe lane.
test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider tests
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks; \
	fi
	bash scripts/vm-lane.sh

# The kprobe lane alone: a stock Debian kernel with kprobes, booted in a virtual machine.
test-vm: setup
	bash scripts/vm-lane.sh

clean:
	rm -rf $(VENV) .pytest_cache
