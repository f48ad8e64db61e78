# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv in the repo root, install into it, and install what is missing on the
# machine (Debian's Fashion-MNIST package; for the tests also Chromium and the pinned
# ONNX Runtime Web files of the browser page).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The exact pair that lies on the development machine's disk; pyproject only
# declares ranges so the same code runs on machines with another torch.
ifeq ($(shell uname -m),aarch64)
TORCH_PIN ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
endif
# Extras of pyproject.toml to install (train: PyTorch and the rest of the training side).
# Each set of extras has its own stamp, so asking for more extras installs them into an
# existing .venv. `make test` installs TEST_EXTRAS: every test runs, the phone formats'
# too (mobile: ExecuTorch and Core ML; litert: .tflite files, which the browser page runs).
EXTRAS      ?= train,dev
TEST_EXTRAS ?= train,dev,mobile,litert
comma := ,
stamp  = $(VENV)/.installed-$(subst $(comma),-,$(1))
STAMP      := $(call stamp,$(EXTRAS))
TEST_STAMP := $(call stamp,$(TEST_EXTRAS))
CHROMIUM ?= /usr/lib/chromium/chromium
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST_FILE := $(FMNIST_DIR)/train-images-idx3-ubyte.gz
# The light install (no PyTorch) that `make test-light` proves.
LIGHT_VENV := build/light-venv
LIGHT_DIR  := build/light

.PHONY: setup data browser demo test test-light lint bench clean
setup: $(STAMP)

# One stamp per set of extras: .venv/.installed-train-dev installs '.[train,dev]'.
$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[$(subst -,$(comma),$*)]'
	touch $@

data:
	@if [ ! -f "$(FMNIST_FILE)" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	    echo "installing Debian package dataset-fashion-mnist"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST not found in $(FMNIST_DIR); set POCKETCNN_DATA_DIR (see README)"; \
	  fi; \
	fi

# The browser tests: Debian's Chromium and the pinned browser runtimes, ONNX Runtime Web and LiteRT.js
# (npm pack, each checked against its npm integrity hash, about 47 MB downloaded once, never from a
# CDN; `pocketcnn web-runtime` does the same for an installed wheel).
browser: $(TEST_STAMP)
	@if [ ! -x "$(CHROMIUM)" ] && command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; echo "installing Debian package chromium"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; fi
	$(VENV)/bin/pocketcnn web-runtime

demo: setup data
	$(VENV)/bin/pocketcnn demo $(DEMO_ARGS)

test: $(TEST_STAMP) data browser
	$(PY) -m pytest $(PYTEST_ARGS)

# A second virtual environment with only the base install (no torch), running the light
# tests on a model exported in the main environment.
test-light: setup data
	rm -rf $(LIGHT_DIR) && mkdir -p build
	$(PY) tests/light/prepare.py $(LIGHT_DIR) > $(LIGHT_DIR).env
	test -x $(LIGHT_VENV)/bin/python || $(PYTHON) -m venv $(LIGHT_VENV)
	$(LIGHT_VENV)/bin/python -m pip install -q --upgrade pip
	$(LIGHT_VENV)/bin/python -m pip install -q . pytest pytest-timeout httpx
	@if $(LIGHT_VENV)/bin/python -m pip list 2>/dev/null | grep -qiE '^(torch|torchvision|onnx) '; then \
	  echo "the light environment has torch or onnx installed"; exit 1; fi
	set -a; . ./$(LIGHT_DIR).env; set +a; $(LIGHT_VENV)/bin/python -m pytest -p no:cacheprovider tests/light

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(VENV)/bin/pocketcnn bench squeezenet1_1 mobilenet_v2 --reference

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
