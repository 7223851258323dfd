# Two commands do everything: `make run` and `make test`. Both create .venv from uv.lock if needed.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
ARGS ?=

export UV_PYTHON_DOWNLOADS := never
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: run test env clean-artifacts

env: $(VENV)/.synced

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python 3.11
	touch $@

run: env
	$(VENV)/bin/python -m flows.full $(ARGS)

test: env
	$(VENV)/bin/python -m pytest $(ARGS)

clean-artifacts:
	rm -rf artifacts .prefect
