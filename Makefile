# Everything a fresh machine needs: `make demo`, `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint install slow-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# One pytest worker per usable core (pytest-xdist); `make test WORKERS=0` for one process (a CPU quota
# that the core count does not show); `pytest tests/<area>` alone runs in one process.
WORKERS ?= auto
test: lint
	$(BIN)/pytest -q -n $(WORKERS) --durations=12

slow-test: $(STAMP)
	$(BIN)/pytest -q -m slow

demo: $(STAMP)
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
