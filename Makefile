# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
# Any CPython >= 3.11 works, Debian bookworm's own /usr/bin/python3 (3.11.2) included: PYTHON=... picks one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck unit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "otaml needs Python >= 3.11 (Debian bookworm'"'"'s 3.11.2 is fine); set PYTHON=python3.11")'
	@# A bare Debian/Ubuntu has no ensurepip (python3-venv): as root, install the Debian packages first.
	@test -x $(BIN)/python || $(PYTHON) -c 'import ensurepip' 2>/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& echo "make setup: $(PYTHON) has no ensurepip; installing the Debian packages first (scripts/host-deps.sh)" \
			&& scripts/host-deps.sh; } \
		|| { echo "make setup: $(PYTHON) cannot create a virtualenv (no ensurepip): apt-get install python3-venv (Debian/Ubuntu), or sudo scripts/host-deps.sh" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

demo: setup
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		scripts/host-deps.sh; \
	else \
		echo "make demo: not root on Debian/Ubuntu, so no Debian packages installed; the demo picks its mode and says why"; \
	fi
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/otaml demo $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -m "not integration and not containerd and not arm64" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
