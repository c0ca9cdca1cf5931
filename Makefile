# The two front-door commands: `make test` and `make demo` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: test demo docs docs-deps bench clean

# torch/torchvision are pinned to the releases the test suite runs with; pyproject.toml
# itself admits a range.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# KaTeX (npm, pinned by docs/_katex/package-lock.json) renders the docs' math at build time.
KATEX := docs/_katex/node_modules/katex/package.json
$(KATEX): docs/_katex/package-lock.json
	npm ci --prefix docs/_katex --ignore-scripts --no-audit --no-fund
	touch $@

docs-deps: $(KATEX)

# ruff (configured in pyproject.toml) first; tests/test_docs_site.py runs `mkdocs build --strict` and opens the site in headless Chromium.
test: $(VENV)/.installed $(KATEX)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

docs: $(VENV)/.installed $(KATEX)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# A second `make demo` continues the run in out/demo (or, once it is done, makes its pictures again).
demo: $(VENV)/.installed
	$(PY) examples/demo.py --out out/demo $(if $(wildcard out/demo/run/checkpoint.pt*),--resume)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_basis.py

clean:
	rm -rf $(VENV) site out .pytest_cache .hypothesis docs/_katex/node_modules
