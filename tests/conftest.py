"""Test configuration shared by every test module.

- ``gpu`` tests are skipped when CuPy (or a GPU) is not available.
- ``mpi`` tests are skipped unless pytest itself was launched by ``mpiexec``
  (``tests/run_mpi.py`` does that); under ``mpiexec`` only ``mpi`` tests run,
  so every rank collects the same tests in the same order.
"""

import os

import pytest

import chainer_resnet  # noqa: F401  (installs the chainer compatibility hook first)

_MPI_ENV = ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'PMIX_RANK', 'MPI_LOCALNRANKS')


def launched_under_mpi():
    return any(name in os.environ for name in _MPI_ENV)


def cupy_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    under_mpi = launched_under_mpi()
    has_gpu = None
    skip_gpu = pytest.mark.skip(reason='needs CuPy and a CUDA GPU')
    skip_mpi = pytest.mark.skip(
        reason='MPI test: run under mpiexec (make test-mpi)')
    skip_not_mpi = pytest.mark.skip(reason='not an MPI test; skipped under mpiexec')
    for item in items:
        if 'gpu' in item.keywords:
            if has_gpu is None:
                has_gpu = cupy_available()
            if not has_gpu:
                item.add_marker(skip_gpu)
        if 'mpi' in item.keywords and not under_mpi:
            item.add_marker(skip_mpi)
        if under_mpi and 'mpi' not in item.keywords:
            item.add_marker(skip_not_mpi)
