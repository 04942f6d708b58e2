"""The GPU software stack of a run: cuDNN made visible, cuDNN and NCCL judged, cuDNN tuned.

Which stack runs where (the README's "Supported GPU stacks" table):

- CuPy 13 (``cupy-cuda12x`` 13.x, CUDA 12) is the last CuPy with cuDNN. Its wheel
  links ``libcudnn.so.8`` but looks for it only in CuPy's own folder
  (``~/.cupy/cuda_lib``, filled by ``python -m cupyx.tools.install_library``) and on
  the loader path; ``pip install nvidia-cudnn-cu12==8.9.7.29`` puts it under
  ``site-packages/nvidia/cudnn/lib``, where CuPy 13 does not look, and
  ``pip install nvidia-cudnn-cu12`` gives cuDNN 9, which it cannot load at all.
  :func:`expose_pip_cudnn` (run by ``import chainer_resnet``, before Chainer
  imports CuPy) loads that file by path, so CuPy's link to ``libcudnn.so.8`` is
  satisfied by it. Without cuDNN Chainer silently trains every convolution as
  im2col + GEMM, which is slower.
- CuPy 14 has no cuDNN: Chainer always takes its own kernels there.
- NCCL: both find ``nvidia-nccl-cu12`` themselves (or a ``libnccl.so.2`` on the
  loader path: a site module); ``import cupy.cuda.nccl`` succeeds either way,
  ``cupy.cuda.nccl.available`` says whether a usable NCCL was loaded (CuPy 14
  wants NCCL >= 2.18).

:func:`cudnn_status` and :func:`nccl_status` say it in one line each, for the
doctor and the trainer's stack check; :func:`configure_cudnn` sets the run
options ``--cudnn-autotune`` and ``--cudnn-workspace``. Nothing here imports
CuPy or Chainer at import time.
"""

import ctypes
import importlib.util
import json
import os

# The cuDNN that CuPy 13 for CUDA 12 can load (libcudnn.so.8), pinned: the
# setup.py extra `gpu` and the README install it.
PIP_CUDNN = 'nvidia-cudnn-cu12==8.9.7.29'
PIP_NCCL = 'nvidia-nccl-cu12>=2.18.1,<3'
# Chainer's own default workspace is 8 MiB: cuDNN then leaves out every
# convolution algorithm that needs more scratch memory (FFT and Winograd
# variants among them), whatever their speed. 512 MiB is 3 % of a 16 GB P100,
# and cuDNN takes only what the chosen algorithm needs. Autotune times the
# algorithms once per convolution shape (ResNet-50's do not change in a run)
# instead of taking cuDNN's heuristic pick. Neither default is measured here
# (no GPU was lent to this project): benchmarks/README.md, "cuDNN options".
DEFAULT_WORKSPACE_MIB = 512
DEFAULT_AUTOTUNE = True

_LOADED = {}


def _cupy_folder():
    """The installed CuPy package's folder, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec('cupy')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def cupy_links_cudnn_major(cupy_folder):
    """The cuDNN major version a CuPy wheel links (8 for CuPy 13), or None (CuPy 14:
    no cuDNN; a build from source or conda: it finds cuDNN its own way)."""
    if not os.path.exists(os.path.join(cupy_folder, 'cuda', 'cudnn.py')):
        return None
    try:
        with open(os.path.join(cupy_folder, '.data', '_wheel.json')) as f:
            version = json.load(f)['cudnn']['version']
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(version.split('.')[0])


def pip_cudnn_library(major, paths=None):
    """Path of ``nvidia/cudnn/lib/libcudnn.so.<major>`` from pip's wheel on ``paths``
    (default: ``sys.path``), or None."""
    import sys
    for folder in sys.path if paths is None else paths:
        candidate = os.path.join(folder, 'nvidia', 'cudnn', 'lib', 'libcudnn.so.{}'.format(major))
        if os.path.isfile(candidate):
            return candidate
    return None


def expose_pip_cudnn(cupy_folder=None, paths=None, load=None):
    """Make pip's cuDNN visible to CuPy 13 before CuPy loads it; returns the file or None.

    Loads ``libcudnn.so.8`` from ``nvidia-cudnn-cu12`` 8.x by path, with
    ``RTLD_GLOBAL``: CuPy's cuDNN module, linked to ``libcudnn.so.8``, then binds
    to it (the other cuDNN 8 libraries are found beside it). Does nothing without
    CuPy, for a CuPy that links no cuDNN, without that wheel, or with
    ``CHAINER_RESNET_PIP_CUDNN=0`` (to use a site's cuDNN module instead). Never
    imports CuPy. A library that cannot be loaded is left to CuPy, whose own
    warning then says why.
    """
    if os.environ.get('CHAINER_RESNET_PIP_CUDNN', '1') == '0':
        return None
    folder = cupy_folder if cupy_folder is not None else _cupy_folder()
    if folder is None:
        return None
    major = cupy_links_cudnn_major(folder)
    if major is None:
        return None
    path = pip_cudnn_library(major, paths)
    if path is None or path in _LOADED:
        return path
    try:
        _LOADED[path] = (load or _load_global)(path)
    except OSError:
        return None
    return path


def _load_global(path):
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def cupy_major():
    """CuPy's major version (an int), or None without CuPy."""
    try:
        import cupy
    except Exception:
        return None
    return int(cupy.__version__.split('.')[0])


def cudnn_status():
    """(on, text): whether Chainer will run convolutions, BN and pooling through cuDNN.

    Decided as Chainer decides it (``CHAINER_CUDNN``, then ``import cupy.cudnn``);
    ``text`` names the version and where it came from, or why not and the fix.
    """
    if os.environ.get('CHAINER_CUDNN', '1') == '0':
        return False, 'off: CHAINER_CUDNN=0'
    major = cupy_major()
    if major is None:
        return False, 'off: no CuPy'
    if major >= 14:
        return False, ('off: CuPy {} has no cuDNN (CuPy 14 dropped it); for cuDNN use '
                       'cupy-cuda12x 13.x with {}'.format(major, PIP_CUDNN))
    try:
        import cupy.cudnn  # noqa: F401  (what Chainer imports to decide)
        from cupy.cuda import cudnn
        version = cudnn.getVersion()
    except Exception as e:
        return False, ('off: CuPy {} cannot load cuDNN 8 ({}: {}); pip install "{}" '
                       '(cuDNN 9, what an unpinned install gives, does not load in CuPy 13)'
                       .format(major, type(e).__name__, _first_line(e), PIP_CUDNN))
    where = next(iter(_LOADED), None)
    return True, 'on: cuDNN {}{}'.format(version, ' ({})'.format(where) if where else '')


def nccl_status():
    """(usable, text): whether CuPy has a usable NCCL (pure_nccl needs it), and the fix."""
    major = cupy_major()
    if major is None:
        return False, 'no CuPy'
    try:
        from cupy.cuda import nccl
    except Exception as e:
        return False, 'import cupy.cuda.nccl failed: {}'.format(_first_line(e))
    if not getattr(nccl, 'available', False):
        return False, ('CuPy {} found no usable NCCL (no libnccl.so.2 in nvidia-nccl-cu12 '
                       'or on the loader path{}): pip install "{}", or load the site\'s NCCL '
                       'module in the job'.format(
                           major, ', or one older than 2.18' if major >= 14 else '', PIP_NCCL))
    try:
        version = nccl.get_version()
    except Exception as e:
        return False, 'NCCL is loaded but get_version() failed: {}'.format(_first_line(e))
    return True, 'NCCL {}'.format(version)


def convolution_path(cudnn_on, autotune=DEFAULT_AUTOTUNE, workspace_mib=DEFAULT_WORKSPACE_MIB):
    """How Chainer will run ResNet-50's convolutions, in words."""
    if cudnn_on:
        return 'cuDNN (autotune {}, workspace {} MiB)'.format(
            'on' if autotune else 'off', workspace_mib)
    return 'im2col + GEMM, Chainer\'s own kernels (no cuDNN: slower)'


def configure_cudnn(autotune=DEFAULT_AUTOTUNE, workspace_mib=DEFAULT_WORKSPACE_MIB):
    """Set Chainer's cuDNN options for this process: autotune and the workspace limit.

    ``autotune``: cuDNN times the convolution algorithms for each new shape once
    (at the first iteration) and keeps the fastest; ResNet-50's shapes do not
    change during a run. ``workspace_mib``: the most scratch memory an algorithm
    may take. Neither changes the result beyond cuDNN's algorithm-dependent
    rounding.
    """
    import chainer
    if workspace_mib < 0:
        raise ValueError('cuDNN workspace must be >= 0 MiB, got {}'.format(workspace_mib))
    chainer.global_config.autotune = bool(autotune)
    chainer.backends.cuda.set_max_workspace_size(int(workspace_mib) * 2 ** 20)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
