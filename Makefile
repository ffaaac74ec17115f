# The two commands a new user types: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 4

.PHONY: run test install install-dev assets browser lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python assets
	$(BIN)/pip install --quiet -r requirements.txt

install-dev: $(BIN)/python assets
	$(BIN)/pip install --quiet -r requirements-dev.txt

# Front-end libraries come from the npm registry, pinned by package-lock.json,
# and are copied under static/vendor (never committed).
assets:
	npm ci --no-audit --no-fund --loglevel=error
	node scripts/copy-assets.js

# Debian's Chromium for the browser tests (Playwright never downloads one).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Installs, builds the schema and serves the app on SQLite at http://$(HOST):$(PORT).
run: install
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/gunicorn --workers $(WORKERS) --bind $(HOST):$(PORT) wsgi:app

# Installs everything and runs the whole suite (SQLite and MariaDB, browser tests included).
test: install-dev browser
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's wrk drives the load; the benchmark itself is docs/benchmarks.md.
bench: install-dev
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/identify_bench.py

clean:
	rm -rf $(VENV) node_modules static/vendor
