# The two commands: `make lab` starts the lessons, `make test` runs every test.
# Both set up what a fresh machine needs first (scripts/setup.sh; safe to re-run).

VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888

.PHONY: setup lab test test-fast lint check clean

setup:
	@bash scripts/setup.sh

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) \
	  --allow-root --no-browser --ServerApp.open_browser=False

check: setup
	$(VENV)/bin/ebpfkit check

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Unit tests, real-kernel tests, then the notebooks under nbval.
test: setup lint
	$(PY) -m pytest -q tests
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache
