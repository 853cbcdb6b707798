# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Torch first, pinned: a plain `torch` requirement would fetch another (multi-GB) build.
# The stamp makes re-runs instant until pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[all,test]"
	touch $(STAMP)

# The browser test drives the system's Chromium (Playwright never downloads a browser).
/usr/bin/chromium:
	-apt-get update && apt-get install -y chromium

install: $(STAMP) /usr/bin/chromium

demo: $(STAMP)
	$(VENV)/bin/polymodal demo

test: $(STAMP) /usr/bin/chromium
	$(PY) -m pytest -n 2

bench: $(STAMP)
	$(PY) benchmarks/composition.py

clean:
	rm -rf runs .pytest_cache
