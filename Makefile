# isostack-testbed: the two commands a user needs are `make benchmark` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native
C_SOURCES := $(wildcard device-model/*/*.c isostack-guest/*/*.c isostack-guest/*/*.h)
PLAYBOOK ?= playbooks/smoke.yaml
BENCHMARK_FLAGS ?=
NIGHTLY_RESULTS ?= results/nightly
NIGHTLY_FLAGS ?=
TESTBED_FLAGS ?=

.PHONY: deps native image testbed benchmark nightly test test-unit test-vm lint down clean status

# Host packages (apt) and the venv with the project installed in it (which builds the C parts: setup.py).
$(STAMP): pyproject.toml setup.py testbed/install-deps.sh
	bash testbed/install-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip setuptools
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# The C parts, next to their sources (the guests get isostack's with the package folder): rebuilt when a .c
# file changed; `make native` also rebuilds a missing one. --required: a part that does not compile is an error.
$(NATIVE_STAMP): $(STAMP) $(C_SOURCES)
	$(PY) setup.py -q build_ext --inplace --required
	touch $(NATIVE_STAMP)

native: $(STAMP)
	$(PY) setup.py -q build_ext --inplace --required
	touch $(NATIVE_STAMP)

deps: $(STAMP) $(NATIVE_STAMP)

image: deps
	$(VENV)/bin/testbed image build

testbed: deps
	$(VENV)/bin/testbed up $(TESTBED_FLAGS)

# BENCHMARK_FLAGS: more fab run-benchmark options, e.g. "--set duration=10 --set repeats=5" (docs/playbooks.md)
benchmark: testbed
	$(VENV)/bin/fab run-benchmark --playbook $(PLAYBOOK) $(BENCHMARK_FLAGS)

# The nightly set (playbooks/nightly.yaml) into $(NIGHTLY_RESULTS)/<run>/ with its report, compared with the
# stored baseline of this machine kind and accel (docs/comparing.md); fails on a regression or a failed case.
# NIGHTLY_FLAGS="--promote" stores the run as the baseline when there is none yet (the first night).
nightly: testbed
	$(VENV)/bin/fab nightly --results-dir $(NIGHTLY_RESULTS) $(NIGHTLY_FLAGS)

# The test suite after the lint (ruff, the import contracts, the commit messages).
# pytest exits 5 when it collects no tests: not a failure of the code under test.
test: lint
	$(VENV)/bin/pytest || [ $$? = 5 ]

test-unit: deps
	$(VENV)/bin/pytest -m "not vm"

test-vm: deps
	$(VENV)/bin/pytest -m vm

# ruff; the architecture as import contracts ([tool.importlinter] in pyproject.toml); commit messages since
# .gitlint-since (subject <= 72 characters, a body: .gitlint). lint-imports runs from testbed/: it puts its
# working directory first on sys.path, and from the root the folder testbed/ would shadow the package testbed
# (the graph then holds testbed.testbed.* and every contract on testbed checks nothing).
lint: deps
	$(VENV)/bin/ruff check .
	LINT_IMPORTS=$(VENV)/bin/lint-imports bash .ci/check-imports
	GITLINT=$(VENV)/bin/gitlint bash .ci/check-commits

status: deps
	$(VENV)/bin/testbed status

down:
	@if [ -x $(VENV)/bin/testbed ]; then $(VENV)/bin/testbed down; else echo "nothing to stop (no venv)"; fi

clean: down
	rm -rf $(VENV) .tox .pytest_cache .ruff_cache build
	find device-model isostack-guest -name '*.so' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Check commit messages as you commit (.githooks/commit-msg runs gitlint with .gitlint; docs/contributing.md).
.PHONY: hooks
hooks:
	git config core.hooksPath .githooks
