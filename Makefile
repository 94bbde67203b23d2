# `make test` and `make reproduce` build .venv on first use; a changed requirements.txt rebuilds it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cpu
DATASET ?=
WORKERS ?= 2
BUDGET ?=
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

.PHONY: test reproduce data bench venv clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@# the checkout itself on the venv's path, so notebooks, torchrun and scripts import mixedae_core
	$(PY) -c "import site; open(site.getsitepackages()[0] + '/mixedae_core.pth', 'w').write('$(CURDIR)\\n')"
	@touch $@

# Fashion-MNIST too where it can be had: the test that the committed kept weights give their records' scores needs
# it (and is skipped, saying so, where it cannot be had).
test: $(STAMP)
	@$(MAKE) -s data || echo "Fashion-MNIST unavailable: the tests of committed records are skipped"
	$(PY) -m pytest -q tests

# Fashion-MNIST offline: Debian's dataset-fashion-mnist, else torchvision's download into data/.
data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	     (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: installed Debian's dataset-fashion-mnist into $(FASHION_MNIST_DIR)"; \
	elif $(MAKE) -s $(STAMP) && $(PY) -c "import torchvision; torchvision.datasets.FashionMNIST('data', download=True); torchvision.datasets.FashionMNIST('data', train=False, download=True)" >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: downloaded by torchvision into data/FashionMNIST/raw"; \
	else \
	  echo "Fashion-MNIST is not available and could not be fetched. Either:"; \
	  echo "  - on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (files land in /usr/share/datasets/fashion-mnist), or"; \
	  echo "  - put $(FASHION_MNIST_FILES) (from github.com/zalandoresearch/fashion-mnist, data/fashion) into data/FashionMNIST/raw/,"; \
	  echo "    or into any folder and run: make data FASHION_MNIST_DIR=that/folder"; \
	  exit 1; \
	fi

# Training-step img/s and peak memory of every method, and ViT-B/16 MFU, on this machine's device
# (CUDA in bf16 when present): results/tables/bench.csv.
bench: $(STAMP)
	$(PY) benchmarks/bench.py

# Every run the notebooks need, WORKERS side by side (records in results/runs/$(PRESET)), then the notebooks
# through papermill: results/{notebooks,figures,tables}/$(PRESET) and results/README.md.
# PRESET=smoke (synthetic data, minutes), cpu (default, Fashion-MNIST), long (the cpu model for 5 epochs: hours;
# BUDGET=<seconds> runs it in sittings, each finished run recorded), gpu (CUDA; WORKERS=6).
# DATASET=cifar10, imagefolder:PATH, ...: the same on that dataset, its results in <preset>-<dataset> folders.
NEEDS_FASHION_MNIST := $(if $(DATASET),$(filter fashion-mnist,$(DATASET)),$(filter-out smoke,$(PRESET)))
reproduce: $(STAMP) $(if $(NEEDS_FASHION_MNIST),data)
	$(PY) -m mixedae_core reproduce --preset $(PRESET) --workers $(WORKERS) $(if $(BUDGET),--budget $(BUDGET)) \
	  $(if $(DATASET),--dataset '$(DATASET)')

clean-venv:
	rm -rf $(VENV)
