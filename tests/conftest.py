"""Test configuration shared by every test module.

- ``gpu`` tests are skipped when CuPy (or a GPU) is not available;
  ``cupy_wheel`` tests (a CuPy wheel, no GPU: ``make test-cuda``) when CuPy
  does not import.
- ``mpi`` tests are skipped unless pytest itself was launched by ``mpiexec``
  (``tests/run_mpi.py`` does that); under ``mpiexec`` only ``mpi`` tests run,
  so every rank collects the same tests in the same order.
"""

import os
import sys
import types

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


def cupy_importable():
    try:
        import cupy  # noqa: F401
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    under_mpi = launched_under_mpi()
    has_gpu = has_cupy = None
    skip_gpu = pytest.mark.skip(reason='needs CuPy and a CUDA GPU')
    skip_cupy = pytest.mark.skip(reason='needs a CuPy wheel (make test-cuda)')
    skip_mpi = pytest.mark.skip(
        reason='MPI test: run under mpiexec (make test-mpi)')
    skip_not_mpi = pytest.mark.skip(reason='not an MPI test; skipped under mpiexec')
    for item in items:
        if 'gpu' in item.keywords:
            if has_gpu is None:
                has_gpu = cupy_available()
            if not has_gpu:
                item.add_marker(skip_gpu)
        if 'cupy_wheel' in item.keywords:
            if has_cupy is None:
                has_cupy = cupy_importable()
            if not has_cupy:
                item.add_marker(skip_cupy)
        if 'mpi' in item.keywords and not under_mpi:
            item.add_marker(skip_mpi)
        if under_mpi and 'mpi' not in item.keywords:
            item.add_marker(skip_not_mpi)


@pytest.fixture
def list_tree(tmp_path):
    """Three images (PNG, gray PNG, JPEG) under ``tmp_path/images`` and a list
    file ``tmp_path/train.txt`` naming them, with blank lines and odd spacing.

    Returns ``(list_path, root)`` as strings.
    """
    import numpy
    from PIL import Image
    root = tmp_path / 'images'
    for relative, array in [
            ('a/red.png', numpy.full((6, 9, 3), (255, 0, 0), dtype=numpy.uint8)),
            ('b/gray.png', numpy.full((5, 4), 77, dtype=numpy.uint8)),
            ('a/blue.JPEG', numpy.full((16, 16, 3), (0, 0, 255), dtype=numpy.uint8))]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(str(root / relative))
    list_path = tmp_path / 'train.txt'
    list_path.write_text(
        '\nb/gray.png 1\na/red.png 2\n\n  a/blue.JPEG\t0  \n\n')
    return str(list_path), str(root)


@pytest.fixture
def tiny_trainer(tmp_path):
    """A factory of small Chainer trainers: a 3-to-2 linear classifier on 8 fixed
    samples, batch 4, RMSpropWarmup; ``tiny_trainer(stop=4)`` returns
    ``(trainer, model)`` writing to ``out`` (default ``tmp_path``)."""
    import numpy
    import chainer
    import chainer.links as L
    from chainer import training
    from chainer_resnet.optimizers import RMSpropWarmup

    def make(stop=4, out=None):
        numpy.random.seed(0)
        model = L.Classifier(L.Linear(3, 2))
        x = numpy.random.RandomState(0).randn(8, 3).astype(numpy.float32)
        t = numpy.array([0, 1] * 4, dtype=numpy.int32)
        it = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(x, t), 4)
        opt = RMSpropWarmup(lr=0.1, alpha_sgd=0.5)
        opt.setup(model)
        updater = training.updaters.StandardUpdater(it, opt)
        return (training.Trainer(updater, (stop, 'iteration'), out=str(out or tmp_path)),
                model)
    return make


@pytest.fixture
def fake_cupy(monkeypatch):
    """Install a fake CuPy (version, cuDNN, NCCL, device count) in sys.modules."""
    def make(version='13.6.0', cudnn=8907, nccl=True, devices=1):
        cupy = types.ModuleType('cupy')
        cupy.__version__ = version
        cuda = types.ModuleType('cupy.cuda')
        cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: devices,
                                             runtimeGetVersion=lambda: 12090,
                                             driverGetVersion=lambda: 12090)
        nccl_module = types.ModuleType('cupy.cuda.nccl')
        nccl_module.available = nccl
        if nccl:
            nccl_module.get_version = lambda: 22501
        cupy.cuda = cuda
        cuda.nccl = nccl_module
        modules = {'cupy': cupy, 'cupy.cuda': cuda, 'cupy.cuda.nccl': nccl_module}
        if cudnn is not None:
            modules['cupy.cudnn'] = types.ModuleType('cupy.cudnn')
            libcudnn = types.ModuleType('cupy.cuda.cudnn')
            libcudnn.getVersion = lambda: cudnn
            modules['cupy.cuda.cudnn'] = cuda.cudnn = libcudnn
        else:
            modules['cupy.cudnn'] = None     # import fails, as without libcudnn.so.8
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.delenv('CHAINER_CUDNN', raising=False)
        return cupy
    return make


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
    """A finished `smoke` run (16 iterations on 64 demo images, 1 process), trained once per
    session for the after-training commands: ``(out folder, data cache)``."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import train_imagenet
    cache = str(tmp_path_factory.mktemp('smoke-data'))
    out = tmp_path_factory.mktemp('smoke-run') / 'run'
    train_imagenet.run(['--recipe', 'smoke', '--out', str(out), '--data-cache', cache,
                        '--loaderjobs', '0', '--no-progress'])
    return out, cache
