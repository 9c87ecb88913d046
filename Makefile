# Two commands set everything up and then do their job:
#   make serve   the site at http://127.0.0.1:8000
#   make test    the whole test suite
# Each setup step leaves a stamp file, so running a command again skips what is done.

PYTHON ?= python3
# Silence Material for MkDocs' end-of-life banner on every build.
export NO_MKDOCS_2_WARNING := 1
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install -c constraints.txt

MATHJAX_VERSION := 3.2.2
MATHJAX_DIR := docs/assets/mathjax
MATHJAX_STAMP := $(MATHJAX_DIR)/.installed-$(MATHJAX_VERSION)
# The TeX input with SVG output (no web fonts), plus every component it may load later:
# TeX extensions (autoload), the context menu and the accessibility tools.
MATHJAX_FILES := tex-svg.js core.js loader.js startup.js input output/svg.js output/svg ui a11y sre adaptors

.DEFAULT_GOAL := help
.PHONY: help serve test build snippets check setup-docs setup-test mathjax chromium clean \
	gpu-run gpu-unpack gpu-bundle gpu-wheels gpu-mamba

help:
	@echo "make serve     set up, then serve the site at http://127.0.0.1:8000"
	@echo "make test      set up, then run the whole test suite"
	@echo "make build     build the site into site/ (mkdocs build --strict)"
	@echo "make snippets  run the snippets and write their outputs to docs/generated/"
	@echo "make check     list generated outputs that are missing or stale"
	@echo "make clean     remove the built site and the installed MathJax"
	@echo "make gpu-bundle, then make gpu-run OUT=dir BUDGET=540 (on the GPU machine),"
	@echo "               then make gpu-unpack FILE=dir/outputs.tar.gz; make gpu-wheels"
	@echo "               and make gpu-mamba (optional baselines for the GPU run)"

serve: setup-docs
	$(BIN)/mkdocs serve -a 127.0.0.1:8000

test: setup-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

build: setup-docs
	$(BIN)/mkdocs build --strict

# The build step needs matplotlib, which the test extra brings.
snippets: $(VENV)/.installed-test
	$(BIN)/python -m snippets

check: $(VENV)/.installed-test
	$(BIN)/python -m snippets --check

setup-docs: $(VENV)/.installed-docs mathjax

setup-test: $(VENV)/.installed-test mathjax chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the versions (torch==2.13.0 among them) so that builds repeat.
$(VENV)/.installed-docs: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e ".[docs]"
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e ".[docs,test]"
	touch $@

# MathJax comes from the npm registry and is served from the built site (git-ignored).
mathjax: $(MATHJAX_STAMP)

$(MATHJAX_STAMP):
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed to install MathJax (Debian: apt-get install npm)" >&2; exit 1; }
	npm install --prefix . --no-save --no-package-lock --no-audit --no-fund mathjax@$(MATHJAX_VERSION)
	rm -rf $(MATHJAX_DIR)
	mkdir -p $(MATHJAX_DIR)
	cd node_modules/mathjax/es5 && cp -R --parents $(MATHJAX_FILES) $(CURDIR)/$(MATHJAX_DIR)/
	cp node_modules/mathjax/LICENSE $(MATHJAX_DIR)/
	touch $@

# Debian's chromium for the browser test, installed when missing and we are root or may
# use sudo without a password. Without it the browser test fails under CI and skips elsewhere.
chromium:
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
	else echo "chromium is missing and cannot be installed without root: sudo apt-get install chromium"; exit 0; fi; \
	$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

clean:
	rm -rf site .cache node_modules $(MATHJAX_DIR)

# The GPU run (snippets/_build/gpu.py): one command for a short GPU loan, with the machine's
# own python3 (no venv, no install, no network). Without CUDA it is a dry run at CPU sizes
# into a scratch copy of the outputs. OUT receives outputs.tar.gz, steps.txt, run.log,
# environment.json and smoke.json.
OUT ?= gpu-run
BUDGET ?= 540
# More options of the run, e.g. GPU_RUN_ARGS="--only flash_attention" (see --help).
GPU_RUN_ARGS ?=
# The first of the venv's python and python3 that imports torch.
GPU_PYTHON ?= $(firstword $(foreach p,$(BIN)/python python3,$(shell $(p) -c "import torch" >/dev/null 2>&1 && echo $(p))))

gpu-run:
	@test -n "$(GPU_PYTHON)" || { echo "gpu-run needs a python3 with torch" >&2; exit 1; }
	$(GPU_PYTHON) -m snippets._build.gpu run --out "$(OUT)" --budget $(BUDGET) $(GPU_RUN_ARGS)

# Puts the outputs of a GPU run into docs/generated/, refusing those whose sources changed.
gpu-unpack:
	@test -n "$(FILE)" || { echo "usage: make gpu-unpack FILE=gpu-run/outputs.tar.gz" >&2; exit 2; }
	$(PYTHON) -m snippets._build.gpu unpack "$(FILE)" $(UNPACK_ARGS)

# Records the commit (and whether the tree is dirty) in gpu-bundle.json, which travels with a
# copy of the working tree that has no .git.
gpu-bundle:
	$(PYTHON) -m snippets._build.gpu bundle

# Fetches the optional baselines' wheels (PyPI) into .gpu-wheels/ (git-ignored): a copy of the
# tree for a GPU machine must carry that folder along.
gpu-wheels:
	$(PYTHON) -m snippets._build.gpu wheels

# Builds mamba-ssm's wheel, CUDA extension included, for the GPU machine (sm_90, Python 3.12,
# its torch: MAMBA_TORCH, default 2.11.0) into .gpu-wheels/. Needs nvcc; MAMBA_PYTHON names a
# Python 3.12 with a CUDA build of that torch, else one is made in .gpu-build/ (several
# GB, once).
MAMBA_PYTHON ?=
MAMBA_TORCH ?=
gpu-mamba:
	$(PYTHON) -m snippets._build.gpu mamba $(if $(MAMBA_PYTHON),--python "$(MAMBA_PYTHON)") \
		$(if $(MAMBA_TORCH),--torch "$(MAMBA_TORCH)")
