"""The GPU stack: pip's cuDNN made visible to CuPy 13, cuDNN and NCCL judged, cuDNN options.

Most tests build the CuPy they need as a fake (a folder laid out like the
wheel, or modules in ``sys.modules``), so they run anywhere. Those marked
``cupy_wheel`` run against the real CuPy wheels ``make test-cuda`` installs
(``.venv-cuda13``: cupy-cuda12x 13.6 with the pinned nvidia-cudnn-cu12 8.9;
``.venv-cuda14``: cupy-cuda12x 14.2; neither has NCCL, and there is no GPU),
each in a fresh interpreter because CuPy decides about cuDNN at import.
"""

import json
import os
import subprocess
import sys

import pytest

from chainer_resnet import communication, gpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_cupy_folder(tmp_path, cudnn_version='8.8.1', with_cudnn_module=True):
    """A folder laid out like an installed CuPy wheel (cupy/.data/_wheel.json)."""
    folder = tmp_path / 'cupy'
    (folder / 'cuda').mkdir(parents=True)
    (folder / '.data').mkdir()
    if with_cudnn_module:
        (folder / 'cuda' / 'cudnn.py').write_text('')
    wheel = {'cuda': '12.x', 'packaging': 'pip'}
    if cudnn_version:
        wheel['cudnn'] = {'version': cudnn_version}
    (folder / '.data' / '_wheel.json').write_text(json.dumps(wheel))
    return str(folder)


def _pip_cudnn(tmp_path, major):
    lib = tmp_path / 'site' / 'nvidia' / 'cudnn' / 'lib'
    lib.mkdir(parents=True, exist_ok=True)
    (lib / 'libcudnn.so.{}'.format(major)).write_bytes(b'')
    return str(tmp_path / 'site')


def test_cudnn_major_is_read_from_the_cupy_wheel(tmp_path):
    assert gpu.cupy_links_cudnn_major(_fake_cupy_folder(tmp_path / 'a')) == 8
    # CuPy 14: no cupy/cuda/cudnn.py, no cuDNN at all.
    assert gpu.cupy_links_cudnn_major(
        _fake_cupy_folder(tmp_path / 'b', with_cudnn_module=False)) is None
    # A CuPy built elsewhere (no cuDNN entry in _wheel.json) finds cuDNN its own way.
    assert gpu.cupy_links_cudnn_major(_fake_cupy_folder(tmp_path / 'c', None)) is None


def test_pip_cudnn_of_the_linked_major_is_loaded_once(tmp_path, monkeypatch):
    monkeypatch.delenv('CHAINER_RESNET_PIP_CUDNN', raising=False)
    monkeypatch.setattr(gpu, '_LOADED', {})
    cupy13 = _fake_cupy_folder(tmp_path)
    site = _pip_cudnn(tmp_path, 8)
    loaded = []
    path = gpu.expose_pip_cudnn(cupy13, paths=[site], load=loaded.append)
    assert path == os.path.join(site, 'nvidia', 'cudnn', 'lib', 'libcudnn.so.8')
    assert loaded == [path]
    assert gpu.expose_pip_cudnn(cupy13, paths=[site], load=loaded.append) == path
    assert loaded == [path]     # not twice


def test_no_pip_cudnn_is_loaded_where_it_cannot_serve(tmp_path, monkeypatch):
    monkeypatch.delenv('CHAINER_RESNET_PIP_CUDNN', raising=False)
    monkeypatch.setattr(gpu, '_LOADED', {})
    loaded = []
    # cuDNN 9 (what `pip install nvidia-cudnn-cu12` gives) for a CuPy linking cuDNN 8.
    site9 = _pip_cudnn(tmp_path / 'nine', 9)
    assert gpu.expose_pip_cudnn(_fake_cupy_folder(tmp_path / 'a'), paths=[site9],
                                load=loaded.append) is None
    # CuPy 14: no cuDNN to feed.
    site8 = _pip_cudnn(tmp_path / 'eight', 8)
    assert gpu.expose_pip_cudnn(_fake_cupy_folder(tmp_path / 'b', with_cudnn_module=False),
                                paths=[site8], load=loaded.append) is None
    # The site's cuDNN module is asked for.
    monkeypatch.setenv('CHAINER_RESNET_PIP_CUDNN', '0')
    assert gpu.expose_pip_cudnn(_fake_cupy_folder(tmp_path / 'c'), paths=[site8],
                                load=loaded.append) is None
    assert loaded == []


def test_a_library_that_does_not_load_is_left_to_cupy(tmp_path, monkeypatch):
    monkeypatch.delenv('CHAINER_RESNET_PIP_CUDNN', raising=False)
    monkeypatch.setattr(gpu, '_LOADED', {})
    site = _pip_cudnn(tmp_path, 8)     # an empty file: not a shared object
    assert gpu.expose_pip_cudnn(_fake_cupy_folder(tmp_path), paths=[site]) is None


def test_cudnn_status_says_on_with_the_version(fake_cupy):
    fake_cupy(cudnn=8907)
    on, text = gpu.cudnn_status()
    assert on and 'cuDNN 8907' in text


def test_cudnn_status_says_why_not_and_the_fix(fake_cupy, monkeypatch):
    fake_cupy(cudnn=None)
    on, text = gpu.cudnn_status()
    assert not on and gpu.PIP_CUDNN in text and 'cuDNN 9' in text
    fake_cupy(version='14.2.0')
    on, text = gpu.cudnn_status()
    assert not on and 'CuPy 14' in text and 'cupy-cuda12x 13' in text
    fake_cupy(cudnn=8907)
    monkeypatch.setenv('CHAINER_CUDNN', '0')
    assert gpu.cudnn_status() == (False, 'off: CHAINER_CUDNN=0')


def test_convolution_path_names_the_options():
    assert gpu.convolution_path(True, True, 512) == 'cuDNN (autotune on, workspace 512 MiB)'
    assert gpu.convolution_path(False).startswith('im2col + GEMM')


def test_nccl_status(fake_cupy):
    fake_cupy(nccl=True)
    assert gpu.nccl_status() == (True, 'NCCL 22501')
    fake_cupy(nccl=False)
    usable, text = gpu.nccl_status()
    assert not usable and gpu.PIP_NCCL in text
    fake_cupy(version='14.2.0', nccl=False)
    assert 'older than 2.18' in gpu.nccl_status()[1]


def test_a_missing_nccl_fails_the_stack_check(fake_cupy):
    # import cupy.cuda.nccl works without libnccl: only `available` tells.
    fake_cupy(nccl=False, devices=1)
    with pytest.raises(communication.CommunicationError) as e:
        communication.check_gpu_stack()
    assert 'pure_nccl' in str(e.value) and gpu.PIP_NCCL in str(e.value)
    fake_cupy(nccl=True, devices=1)
    communication.check_gpu_stack()
    fake_cupy(nccl=True, devices=0)
    with pytest.raises(communication.CommunicationError, match='no visible GPU'):
        communication.check_gpu_stack()


def test_configure_cudnn_sets_chainer_options(monkeypatch):
    chainer = pytest.importorskip('chainer')
    sizes = []
    # Chainer passes the size to CuPy's cuDNN module, which exists only with cuDNN.
    monkeypatch.setattr(chainer.backends.cuda, 'set_max_workspace_size', sizes.append)
    monkeypatch.setattr(chainer.global_config, 'autotune', False)
    gpu.configure_cudnn(autotune=True, workspace_mib=512)
    assert chainer.config.autotune is True and sizes == [512 * 2 ** 20]
    gpu.configure_cudnn(autotune=False, workspace_mib=8)
    assert chainer.config.autotune is False and sizes[-1] == 8 * 2 ** 20
    with pytest.raises(ValueError):
        gpu.configure_cudnn(workspace_mib=-1)


def test_the_pins_are_the_same_everywhere():
    # setup.py installs, the compile stage checks and the README tells one cuDNN and NCCL.
    with open(os.path.join(ROOT, 'setup.py')) as f:
        setup = f.read()
    with open(os.path.join(ROOT, 'requirements', 'cuda13.txt')) as f:
        cuda13 = f.read().split()
    with open(os.path.join(ROOT, 'README.md')) as f:
        readme = f.read()
    assert "'{}'".format(gpu.PIP_CUDNN) in setup and "'{}'".format(gpu.PIP_NCCL) in setup
    assert gpu.PIP_CUDNN in cuda13
    assert gpu.PIP_CUDNN in readme and gpu.PIP_NCCL in readme


# ---- against the real CuPy wheels (make test-cuda) ------------------------------

def _fresh(code, **env):
    """Run `code` in a new interpreter of this venv; its last line parsed as JSON."""
    environment = dict(os.environ, PYTHONPATH=ROOT, **env)
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], capture_output=True,
                          text=True, env=environment, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


STATUS = ('import json, chainer_resnet\nfrom chainer_resnet import gpu\n'
          'print(json.dumps([gpu.cupy_major(), gpu.cudnn_status(), gpu.nccl_status()]))')


@pytest.mark.cupy_wheel
def test_real_cupy_13_loads_the_pinned_pip_cudnn():
    major, (on, text), _ = _fresh(STATUS, CHAINER_RESNET_PIP_CUDNN='1')
    if major != 13:
        pytest.skip('CuPy {}: no cuDNN to load'.format(major))
    pinned = gpu.PIP_CUDNN.split('==')[1].split('.')
    assert on, text
    assert 'cuDNN {}{}{:02d}'.format(pinned[0], pinned[1], int(pinned[2])) in text
    assert os.path.join('nvidia', 'cudnn', 'lib', 'libcudnn.so.8') in text
    # Negative control: the same CuPy without chainer_resnet's help has no cuDNN
    # (what every CuPy 13 run got before), and says what to install.
    _, (on, text), _ = _fresh(STATUS, CHAINER_RESNET_PIP_CUDNN='0')
    assert not on and 'libcudnn.so.8' in text and gpu.PIP_CUDNN in text


@pytest.mark.cupy_wheel
def test_real_cupy_14_has_no_cudnn():
    major, (on, text), _ = _fresh(STATUS)
    if major < 14:
        pytest.skip('CuPy {} has cuDNN'.format(major))
    assert not on and 'CuPy 14 dropped it' in text


@pytest.mark.cupy_wheel
def test_real_cupy_nccl_status_agrees_with_cupy_and_gates_the_stack_check():
    import cupy.cuda.nccl
    usable, text = gpu.nccl_status()
    assert usable == bool(cupy.cuda.nccl.available), text
    if usable:
        pytest.skip('this machine has NCCL: ' + text)
    # `import cupy.cuda.nccl` worked, NCCL did not load: the trainer's check says so.
    with pytest.raises(communication.CommunicationError) as e:
        communication.check_gpu_stack()
    assert 'found no usable NCCL' in str(e.value) and gpu.PIP_NCCL in str(e.value)
