"""The chainer 7.8.1 compatibility hook: one test per patched point.

Each check runs in a fresh interpreter, because the hook acts at import
time. Breakages that only appear on another stack (NumPy 2, Python 3.12,
setuptools >= 82) are simulated here by hiding the module or attribute that
stack lacks; the negative controls show the simulation really breaks an
unpatched ``import chainer``.
"""

import subprocess
import sys
import textwrap

import numpy
import pytest

from chainer_resnet import _compat


def run_python(code):
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


HIDE = {
    # Python 3.12 / setuptools >= 74: no numpy.distutils.
    'numpy.distutils': "import sys; sys.modules['numpy.distutils'] = None\n",
    # setuptools >= 82: no pkg_resources.
    'pkg_resources': "import sys; sys.modules['pkg_resources'] = None\n",
    # NumPy 2: no np.sctypes.
    'np.sctypes': "import numpy\nif hasattr(numpy, 'sctypes'): del numpy.sctypes\n",
}


@pytest.mark.parametrize('missing', sorted(HIDE))
def test_unpatched_chainer_breaks_without_the_module(missing):
    # Negative control: the simulation reproduces the real failure.
    code, out = run_python(HIDE[missing] + 'import chainer\n')
    assert code != 0, out


@pytest.mark.parametrize('missing', sorted(HIDE))
def test_patched_chainer_imports_without_the_module(missing):
    code, out = run_python(HIDE[missing] + textwrap.dedent('''
        import chainer_resnet, chainer, chainermn
        import chainer.functions as F, numpy as np
        x = chainer.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))
        y = F.as_strided(x, (2, 2), (4, 4))
        y.grad = np.ones((2, 2), np.float32)
        y.backward()
        print('grad-sum', x.grad.sum())
    '''))
    assert code == 0, out
    assert 'grad-sum 4.0' in out


def test_as_strided_backward_rejects_integer_gradients():
    # Point 3 keeps the original behaviour: only float gradients back-prop.
    import chainer.functions.array.as_strided as mod
    geometry = mod.TensorGeometry(numpy.zeros((2, 2), numpy.float32))
    grad = mod.AsStridedGrad(geometry, (2, 2), (4, 4), 0)
    with pytest.raises(TypeError):
        grad.forward((numpy.ones((2, 2), numpy.int32),))


def test_resize_images_runs():
    # Point 4: numpy.float is gone since NumPy 1.24, so this fails unpatched
    # on every stack we support.
    import chainer.functions as F
    x = numpy.arange(16, dtype=numpy.float32).reshape(1, 1, 4, 4)
    y = F.resize_images(x, (7, 7), align_corners=True)
    assert y.shape == (1, 1, 7, 7)
    numpy.testing.assert_allclose(y.array[0, 0, 0, 0], 0.0)
    numpy.testing.assert_allclose(y.array[0, 0, -1, -1], 15.0)
    y = F.resize_images(x, (8, 8), align_corners=False)
    assert y.shape == (1, 1, 8, 8)


def _kernel_sources(module):
    """The CUDA sources ChainerMN's batched pack/unpack give chainer.cuda.raw."""
    import chainer.backends.cuda as cuda
    sources = []
    saved = cuda.raw
    cuda.raw = lambda code, name, *args, **kwargs: sources.append(code)
    try:
        module._cupy_batched_pack_params()
        module._cupy_batched_unpack_params()
    finally:
        cuda.raw = saved
    return sources


def test_batched_pack_and_unpack_kernels_include_cuda_fp16():
    # Point 5: `half` is defined by cuda_fp16.h, which CuPy 14's carray.cuh no
    # longer includes. make test-cuda compiles these sources with CuPy 13 and 14.
    import importlib.util
    from chainermn.communicators import _memory_utility
    for code in _kernel_sources(_memory_utility):
        assert code.index('#include <cuda_fp16.h>') < code.index('half')
    # Negative control: the module as ChainerMN ships it (loaded under another
    # name, which the hook leaves alone) has no such include.
    spec = importlib.util.spec_from_file_location('shipped', _memory_utility.__file__)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    for code in _kernel_sources(shipped):
        assert 'half' in code and 'cuda_fp16.h' not in code


def test_pure_nccl_packs_gradients_with_the_batched_kernels(monkeypatch):
    # Why point 5 is the kernels: pure_nccl always takes the batched path for
    # gradients; the batched_copy=False a user passes is dropped by set_config.
    import chainermn
    from chainermn import nccl
    from chainermn.communicators import _memory_utility
    monkeypatch.setattr(nccl, '_available', True)
    monkeypatch.setattr(nccl, 'get_build_version', lambda: 22501, raising=False)
    monkeypatch.setattr(nccl, 'get_version', lambda: 22501, raising=False)
    monkeypatch.setattr(_memory_utility, 'DeviceMemory', object)    # no GPU memory here
    comm = chainermn.create_communicator('pure_nccl', batched_copy=False)
    assert comm.batched_copy is True
    calls = []
    monkeypatch.setattr(_memory_utility, 'ParamsData', lambda *args: 'params-data')
    monkeypatch.setattr(_memory_utility, '_batched_pack_params',
                        lambda *args, **kwargs: calls.append('pack'))
    monkeypatch.setattr(_memory_utility, '_batched_unpack_params',
                        lambda *args, **kwargs: calls.append('unpack'))
    for unbatched in ('pack_params', 'unpack_params'):
        monkeypatch.setattr(_memory_utility, unbatched, lambda *args, **kwargs: calls.append(
            'unbatched'))
    comm._pack_params_to_buffer([], 'grad', None, numpy.float16, False)
    comm._unpack_params_from_buffer([], 'grad', None, numpy.float16, False)
    assert calls == ['pack', 'unpack']


def test_every_point_is_patched_once_chainer_is_imported():
    import chainer  # noqa: F401
    import chainer.functions  # noqa: F401
    import chainermn.communicators._memory_utility  # noqa: F401
    assert _compat.patched_modules() == sorted(_compat.PATCHES)


def test_wrong_chainer_source_fails_loudly(tmp_path):
    src = tmp_path / 'fake.py'
    src.write_text('x = 1\n')
    loader = _compat._PatchingLoader('fake', str(src), [('y = 2', 'y = 3')])
    with pytest.raises(_compat.IncompatibleChainerError, match='chainer==7.8.1'):
        loader.get_code('fake')


def test_importing_chainer_first_warns():
    code, out = run_python('''
        import sys, types, warnings
        # Stands for a patched module imported without the hook.
        name = 'chainer.functions.array.resize_images'
        sys.modules[name] = types.ModuleType(name)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            import chainer_resnet
        print([str(x.message)[:40] for x in w])
    ''')
    assert code == 0, out
    assert 'chainer was imported before chainer_r' in out


def test_import_chainer_resnet_needs_neither_cupy_nor_mpi():
    code, out = run_python('''
        import sys
        sys.modules['cupy'] = None
        sys.modules['mpi4py'] = None
        import chainer_resnet
        from chainer_resnet import recipes, communication
        print('ok', 'chainer' in sys.modules)
    ''')
    assert code == 0, out
    assert 'ok' in out
