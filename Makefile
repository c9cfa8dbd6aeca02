# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install, generate the demo data if missing, launch the app
#   make test   create .venv, install (+ test tools, Debian chromium for the browser suite), run ruff, mypy and the tests
# Everything lands in .venv/, demo_data/ and .workspace/ inside the checkout.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell cat requirements.txt | sha1sum | cut -c1-10)
DEV_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-10)
# The workspace (caches, review store segwb.sqlite, install secret secret.key, masks/) is NOT set here: the engine
# resolves it the same way for make, python -m engine and the app ($SEGWB_WORKSPACE if set, else .workspace/ in
# this checkout; engine/install.py), so `python -m engine users add ...` writes the store `make serve` checks.
# Largest image (H x W x frames x channels) any reader decodes; checked from the header (engine/io/limits.py).
export SEGWB_MAX_PIXELS ?= 100000000
# Hours an uploaded file (Predict/Compare pages) is kept in <workspace>/uploads (0600) before deletion (engine/phi.py).
export SEGWB_UPLOAD_TTL_HOURS ?= 24
export PYTHONUNBUFFERED := 1
PORT ?= 8501
# Team mode (make serve): upload caps in MB (per file; per signed-in session and for the whole server, counted
# in memory before a body is read; ui/webgate.py) and the address to listen on (all interfaces by default).
UPLOAD_MB ?= 200
export SEGWB_UPLOAD_SESSION_MB ?= 500
export SEGWB_UPLOAD_TOTAL_MB ?= 2000
SERVE_ADDRESS ?= 0.0.0.0
PYTEST_ARGS ?=

.PHONY: run serve test lint install install-dev browser dicomtools postgresql demo demo-full clean bench

# Single-user demo: this machine only (127.0.0.1), no sign-in.
run: install demo
	SEGWB_MODE=demo $(BIN)/streamlit run app.py --server.port $(PORT) --server.address 127.0.0.1

# Team mode: all interfaces, the app behind the session gate (serve.py: sign-in page, session cookies, media and
# uploads for signed-in sessions only, upload caps); refuses to start while the review store ($$SEGWB_STORE_URL or
# the workspace store) has no active admin (serve-check says which store it checked and how to add an admin).
serve: install
	SEGWB_MODE=team $(BIN)/python -m engine serve-check
	SEGWB_MODE=team $(BIN)/streamlit run serve.py --server.port $(PORT) --server.address $(SERVE_ADDRESS) \
		--server.maxUploadSize $(UPLOAD_MB) --server.enableXsrfProtection true --server.enableCORS true \
		--server.headless true --browser.gatherUsageStats false

test: install-dev browser dicomtools postgresql demo lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff over the whole checkout and mypy on engine/ (configuration in pyproject.toml)
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.req-$(REQ_HASH): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	rm -f $(VENV)/.req-* && touch $@

$(VENV)/.dev-$(DEV_HASH): $(VENV)/.req-$(REQ_HASH) requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.dev-* && touch $@

install: $(VENV)/.req-$(REQ_HASH)

install-dev: $(VENV)/.dev-$(DEV_HASH)

# Debian's Chromium (+ an emoji font for readable screenshots) for the real-browser suite;
# Playwright never downloads a browser here.
BROWSER_PKGS := chromium fonts-noto-color-emoji
browser:
	@if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "color emoji"; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS) >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS) >/dev/null; \
	else echo "warning: chromium/fonts missing and no root: the browser suite will be skipped if chromium is absent"; fi

# dicom3tools' dciodvfy validates the exported DICOM-SEG objects against the IOD in tests/engine/test_interop.py
# (the test skips when it is absent).
dicomtools:
	@if command -v dciodvfy >/dev/null; then echo "dciodvfy: $$(command -v dciodvfy)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null; \
	else echo "warning: dicom3tools missing and no root: the DICOM-SEG IOD check will be skipped"; fi

# Debian's PostgreSQL server binaries: the store tests start a throwaway server from them (initdb in a
# temp folder, unprivileged, 127.0.0.1 only); without them those tests skip with a message.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo "postgresql: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "warning: postgresql binaries missing and no root: the PostgreSQL store tests will be skipped"; fi

demo: install
	$(BIN)/python -m engine demo --out demo_data --if-missing

demo-full: install
	$(BIN)/python -m engine demo --out demo_data_full --scale full

# every benchmark in bench/ (JSON in bench/results/, previous ones in bench/results/history/);
# BENCH_ARGS picks a subset, e.g. make bench BENCH_ARGS="--skip-slow" or BENCH_ARGS="--only conflicts"
BENCH_ARGS ?=
bench: install-dev demo
	$(BIN)/python -m engine demo --out demo_data_full --scale full --if-missing
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_data .workspace .pytest_cache
