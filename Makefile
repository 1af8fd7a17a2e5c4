# Two commands for a fresh machine:  `make run`  (the notebook suite on the embedded default)
#                                    `make test` (the tests; `make test-fast` skips the slow tier)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test test-fast smoke bench clean-results

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

run: $(VENV)/.installed
	$(PY) -m probelib run

smoke: $(VENV)/.installed
	$(PY) -m probelib run --smoke --out results/smoke

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the fast tier: everything not marked @pytest.mark.slow (see pyproject.toml)
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-results:
	rm -rf results
