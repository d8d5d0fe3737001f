# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
# Both create the virtual environment .venv on first use and install spcl into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test lint format clean

$(BIN)/spcl: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(BIN)/spcl

install: $(BIN)/spcl

demo: install
	$(BIN)/spcl demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q --durations=25

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
