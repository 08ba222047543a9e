# `make test`: set up .venv and run lint + the test suite.
# `make demo`: set up .venv and run the main job on the bundled default model.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= build/demo

.PHONY: install test lint demo clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,test,cpu]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/ranet-edge demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) build *.egg-info
