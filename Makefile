# ambient_fast: `make test` and `make demo` do all set-up on a fresh machine.
#
# The virtual environment sees the system's site-packages, so a torch that is already installed (a user's CUDA
# build, say) is kept; only when no torch is importable do we install the pinned CPU-friendly release, so that
# CI never pulls a multi-GB CUDA build.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.9.0
# Native build: auto | on | off (see setup.py).
AMBIENT_FAST_CUDA ?= auto
export AMBIENT_FAST_CUDA

STAMP := $(VENV)/.ambient_fast-installed
NATIVE_SOURCES := $(wildcard csrc/* kernels/*) CMakeLists.txt setup.py pyproject.toml

.PHONY: all install test test-fast bench demo demo-ood demo-ood-fullnorm clean

all: test

$(PYTHON):
	python3 -m venv --system-site-packages $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(STAMP): $(PYTHON) $(NATIVE_SOURCES)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PYTHON) -c "import triton" 2>/dev/null || $(PYTHON) -m pip install --quiet "triton==$(TRITON_VERSION)"
	$(PYTHON) -m pip install --quiet numpy safetensors pytest pytest-benchmark scipy "cmake>=3.26" ninja setuptools wheel "scikit-image==0.26.0" "diffusers==0.35.1" "huggingface_hub==0.35.3" matplotlib tqdm "webdataset==1.0.2" "braceexpand==0.1.7"
	$(PYTHON) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PYTHON) -c "import ambient_fast; print('ambient_fast backends (cpu):', ambient_fast.backends())"
	touch $(STAMP)

install: $(STAMP)

# Triton kernels run through the interpreter on a CPU (TRITON_INTERPRET=1 is set by tests/conftest.py).
test: $(STAMP)
	$(PYTHON) -m pytest tests -q -p no:cacheprovider

bench: $(STAMP)
	$(PYTHON) -m pytest benchmarks --benchmark-only -q -p no:cacheprovider

demo: $(STAMP)
	$(PYTHON) -m ambient_fast.demo

# The out-of-distribution experiment (Table 2b) at CPU scale on the same embedded photographs.
demo-ood: $(STAMP)
	$(PYTHON) -m ambient_fast.demo --experiment demo-cpu-ood

# The same with crop(sigma) measured under the full image's GroupNorm statistics (docs/results.md, issue 10 point 7).
demo-ood-fullnorm: $(STAMP)
	$(PYTHON) -m ambient_fast.demo --experiment demo-cpu-ood-fullnorm

clean:
	rm -rf build $(VENV) ambient_fast/_C*.so *.egg-info .benchmarks
