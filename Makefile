# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Every dependency's version, resolved and tested (`make lock` regenerates it; README: upgrading).
CONSTRAINTS := constraints.txt
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast lint lock install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Torch first, pinned: a plain `torch` requirement would fetch another (multi-GB) build.
# Both steps install the versions in $(CONSTRAINTS), so a fresh clone gets what passed the tests.
# The stamp makes re-runs instant until pyproject.toml or $(CONSTRAINTS) changes.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install -q -c $(CONSTRAINTS) $(TORCH)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[all,test]"
	touch $(STAMP)

# The browser test drives the system's Chromium (Playwright never downloads a browser).
/usr/bin/chromium:
	-apt-get update && apt-get install -y chromium

# METEOR (caption metrics) is a Java program; its test runs wherever a Java runtime is found.
/usr/bin/java:
	-apt-get update && apt-get install -y default-jre-headless

# Spoken captions are synthesised with espeak-ng (`polymodal data speak`, the audio tests).
/usr/bin/espeak-ng:
	-apt-get update && apt-get install -y espeak-ng

install: $(STAMP) /usr/bin/chromium /usr/bin/java /usr/bin/espeak-ng

demo: $(STAMP)
	$(VENV)/bin/polymodal demo

test: $(STAMP) /usr/bin/chromium /usr/bin/java /usr/bin/espeak-ng
	$(PY) -m pytest -n 2

# The tests not marked slow (no training runs, browser or subprocess-heavy CLI runs): under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# Re-resolve $(CONSTRAINTS) for every platform and Python the package supports. Versions pinned there
# stay unless named: `make lock UPGRADE="numpy pillow"` moves those to their newest releases.
lock: $(STAMP)
	printf '%s\n' $(TORCH) > $(VENV)/torch-pins.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra all --extra test --universal --python-version 3.10 \
		-c $(VENV)/torch-pins.txt $(foreach p,$(UPGRADE),--upgrade-package $(p)) \
		--custom-compile-command "make lock" --quiet -o $(CONSTRAINTS)

bench: $(STAMP)
	$(PY) benchmarks/composition.py

clean:
	rm -rf runs .pytest_cache
