# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv in the repo root, install into it, and fetch the
# Fashion-MNIST files from Debian's package when they are missing.
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
EXTRAS ?= dev
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST_FILE := $(FMNIST_DIR)/train-images-idx3-ubyte.gz

.PHONY: setup data demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
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

demo: setup data
	$(VENV)/bin/pocketcnn demo $(DEMO_ARGS)

test: setup data
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/pocketcnn bench squeezenet1_1 mobilenet_v2 --reference

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
