# isostack-testbed: the two commands a user needs are `make benchmark` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PLAYBOOK ?= playbooks/smoke.yaml

.PHONY: deps image testbed benchmark test test-unit test-vm lint down clean status

# Host packages (apt) and the venv with the project installed in it.
$(STAMP): pyproject.toml testbed/install-deps.sh
	bash testbed/install-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

image: deps
	$(VENV)/bin/testbed image build

testbed: deps
	$(VENV)/bin/testbed up

benchmark: testbed
	$(VENV)/bin/fab run-benchmark --playbook $(PLAYBOOK)

# pytest exits 5 when it collects no tests: not a failure of the code under test.
test: deps
	$(VENV)/bin/pytest || [ $$? = 5 ]

test-unit: deps
	$(VENV)/bin/pytest -m "not vm"

test-vm: deps
	$(VENV)/bin/pytest -m vm

lint: deps
	$(VENV)/bin/ruff check .

status: deps
	$(VENV)/bin/testbed status

down:
	@if [ -x $(VENV)/bin/testbed ]; then $(VENV)/bin/testbed down; else echo "nothing to stop (no venv)"; fi

clean: down
	rm -rf $(VENV) .tox .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Check commit messages as you commit (.githooks/commit-msg runs gitlint with .gitlint; docs/contributing.md).
.PHONY: hooks
hooks:
	git config core.hooksPath .githooks
