# The two commands (README, docs/getting-started.md):
# `make demo`:  set up .venv and run the main job on the bundled default model.
# `make test`:  the quick loop: set up .venv, run ruff, then the tests of every module but those
#               marked `slow` (pytest -m "not slow"); tests/quick_loop.py fails the run when a
#               module is left without a fast test. A few minutes once .venv is made.
# And the whole run:
# `make check`: everything, what .ci/run runs: lint, the lean environment (test-lean), test-js,
#               test-openvino, docs-strict, test-wheel, test-arm64, gpu-dry-run, then the whole
#               suite in .venv, slow tests (the configuration sweep among them) included.
# Its parts, each runnable alone:
# `make test-lean`: the suite in a lean second environment (.venv-lean: only `.[cpu,qnn,serve]`
#              and pytest, no torch/onnx/matplotlib/ray).
# `make test-js`: install js/ from its lockfile and run the JavaScript tests (Node, Chromium).
# `make test-openvino`: tests/test_openvino.py in .venv-openvino (onnxruntime-openvino).
# `make docs`: build the documentation site (docs/, mkdocs.yml) into build/site; `make docs-strict`
#              builds it with --strict (a warning, a broken link or reference, fails).
# `make test-wheel`: build the sdist and wheel, twine-check them, list the wheel's contents
#              against what it must and must not hold, install it with [cpu] into a fresh venv
#              and run `ranet-edge demo` and `ranet-edge predict` from outside the tree.
# `make test-arm64`: the wheel and the runtime's core tests on arm64 under qemu-user, and the
#              shipped bundle's agreement with x86_64 (docs/guides/arm64.md).
# `make gpu-dry-run`: the prepared GPU check (benchmarks/gpu/check.sh) on the CPU provider, --quick:
#              every section it runs must pass before the check goes to a GPU host.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LEAN := .venv-lean
LEAN_STAMP := $(LEAN)/.installed
OPENVINO := .venv-openvino
OPENVINO_STAMP := $(OPENVINO)/.installed
DEMO_DIR ?= build/demo

.PHONY: install test check test-lean test-openvino lint demo clean js-install test-js js-run-tests docs docs-strict \
	test-wheel test-arm64 gpu-dry-run

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,test,cpu]'
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[docs]'
	touch $(STAMP)

# What an app embeds: the runtime with one onnxruntime build, nothing else, plus the QNN plugin
# (beside the CPU build) so that the HTP simulation runs on every test run (where its wheel exists),
# and the one-process server (the serve extra: uvicorn, prometheus-client, grpcio; no torch, no Ray).
$(LEAN_STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install --quiet --upgrade pip
	$(LEAN)/bin/python -m pip install --quiet -c constraints.txt -e '.[cpu,qnn,serve]' pytest
	touch $(LEAN_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# The whole suite in the lean environment: tests that need torch, onnx or matplotlib skip
# themselves; the runtime tests (the device_io path and every runtime command on the shipped
# bundle included) run. First proves the extras really are absent there.
test-lean: $(LEAN_STAMP)
	$(LEAN)/bin/python -c "import importlib.util as u, sys; extra = [m for m in ('torch', 'onnx', 'onnxsim', 'matplotlib') if u.find_spec(m)]; sys.exit(f'{LEAN} is not lean: {extra}' if extra else 0)"
	$(LEAN)/bin/ranet-edge doctor --json > $(LEAN)/doctor.json
	$(LEAN)/bin/pytest -q -p no:cacheprovider

# --provider openvino for real: Intel's onnxruntime-openvino build replaces the CPU build, so it
# gets an environment of its own (.venv-openvino: `.[openvino]` and pytest) where its wheels exist.
# (Its plugin, onnxruntime-ep-openvino, installs beside the CPU build but offers no device on a
# non-Intel CPU: docs/guides/npu-and-plugin-providers.md.)
$(OPENVINO_STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(OPENVINO)
	$(OPENVINO)/bin/python -m pip install --quiet --upgrade pip
	$(OPENVINO)/bin/python -m pip install --quiet -c constraints.txt -e '.[openvino]' pytest
	touch $(OPENVINO_STAMP)

test-openvino:
	@if [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ]; then $(MAKE) --no-print-directory $(OPENVINO_STAMP) && \
		$(OPENVINO)/bin/pytest -q -p no:cacheprovider -rs tests/test_openvino.py; \
	else echo "test-openvino: skipped, onnxruntime-openvino has wheels for Linux x86_64 and Windows only"; fi

# The quick loop: lint, then every module's fast tests (the `slow` marker, pyproject.toml).
test: lint
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow"

# The whole run: the parts, then the whole suite in .venv, slow tests included.
check: lint test-lean test-js test-openvino docs-strict test-wheel test-arm64 gpu-dry-run
	$(BIN)/pytest -q -p no:cacheprovider

SITE := build/site

docs: $(STAMP)
	$(BIN)/mkdocs build --site-dir $(SITE)

docs-strict: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir $(SITE)

test-wheel: $(STAMP)
	$(BIN)/python tools/wheel_check.py --out build/wheel-check

# The runtime on arm64 under qemu-user: the wheel in an arm64 Debian root (built once, cached
# under build/arm64-root), the tests of tools/arm64/tests.txt there, and the shipped bundle's
# agreement with this host on its 500 sample images (build/arm64/agreement.json). Linux x86_64,
# root and apt only; elsewhere it says why and skips, unless ARM64_REQUIRED=1 (.ci/run) fails it.
test-arm64: $(STAMP)
	HOST_PYTHON=$(BIN)/python bash tools/arm64/test.sh

# The prepared GPU check's dry run on this machine's CPU (benchmarks/gpu/check.sh uses .venv).
gpu-dry-run: $(STAMP)
	bash benchmarks/gpu/check.sh --provider cpu --quick

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

test-js:
	@if command -v node >/dev/null && command -v npm >/dev/null; then $(MAKE) --no-print-directory js-run-tests; \
	else echo "test-js: skipped, Node.js and npm are not installed (the JavaScript driver needs Node >= 18)"; fi

js-run-tests: $(JS_STAMP)
	cd js && node --test test/*.test.js

clean:
	@if [ -d build/arm64-root ]; then bash -c '. tools/arm64/common.sh && arm64_umount_stale build/arm64-root'; fi
	rm -rf --one-file-system $(VENV) $(LEAN) $(OPENVINO) build *.egg-info js/node_modules
