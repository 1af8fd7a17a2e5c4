# Two commands for a fresh machine:  `make run`  (the notebook suite on the embedded default)
#                                    `make test` (the tests; `make test-fast` skips the slow tier)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

NBSTRIP := $(abspath $(PY)) -m nbstripout --keep-id

.PHONY: run test test-fast smoke bench explore clean-results git-filters

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory git-filters
	touch $@

# Tracked notebooks stay free of outputs: git strips them on `git add` (.gitattributes names the filter).
git-filters:
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean "$(NBSTRIP)" && \
	  git config filter.nbstripout.smudge cat && \
	  git config diff.ipynb.textconv "$(NBSTRIP) -t" && \
	  echo "git: notebooks are stripped of outputs on commit (nbstripout filter)"; fi

run: $(VENV)/.installed
	$(PY) -m probelib run

explore: $(VENV)/.installed
	$(PY) -m probelib explore

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
