# `make test`: set up .venv and run lint + the test suite.
# `make demo`: set up .venv and run the main job on the bundled default model.
# `make test-js`: install js/ from its lockfile and run the JavaScript tests (Node, Chromium).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= build/demo

.PHONY: install test lint demo clean js-install test-js

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/ranet-edge demo --out $(DEMO_DIR)

# The JavaScript package: npm ci from the committed lockfile, no install scripts (so no
# download of any binary or browser), then node --test; the Chromium test uses Debian's
# /usr/bin/chromium and skips, saying why, where it is absent.
JS_STAMP := js/node_modules/.installed

$(JS_STAMP): js/package.json js/package-lock.json
	cd js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund
	touch $(JS_STAMP)

js-install: $(JS_STAMP)

test-js: $(JS_STAMP)
	cd js && node --test test/*.test.js

clean:
	rm -rf $(VENV) build *.egg-info js/node_modules
