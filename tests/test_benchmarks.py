"""The benchmark tooling: the photo set, the loader benchmark's accounting and
stage re-run, and the GPU check's dry run. No timing is asserted here."""

import io
import json
import os
import subprocess
import sys
import time
import warnings
import zipfile

import numpy
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, 'benchmarks')
sys.path.insert(0, BENCHMARKS)

import loader  # noqa: E402
import photos  # noqa: E402
from chainer_resnet.data import layouts, transforms  # noqa: E402

# Launcher variables would make the dry run's MPI child think it is in our job.
_MPI_PREFIXES = ('OMPI_', 'PMI_', 'PMIX_', 'MPI_', 'HYDRA_')


@pytest.fixture
def fake_wheel(tmp_path):
    """A zip laid out like scikit-image's wheel with three small textured photos
    (two colour, one greyscale) under the real names."""
    rng = numpy.random.default_rng(5)
    path = tmp_path / 'scikit_image-0.26.0-py3-none-any.whl'
    with zipfile.ZipFile(str(path), 'w') as wheel:
        for name, shape in [('astronaut.png', (60, 80, 3)), ('coffee.png', (50, 75, 3)),
                            ('camera.png', (64, 64))]:
            encoded = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, shape, dtype=numpy.uint8)).save(
                encoded, format='PNG')
            wheel.writestr('skimage/data/' + name, encoded.getvalue())
        wheel.writestr('skimage/data/README.txt', 'not an image')
    return str(path)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, 'rb') as f:
                out[os.path.relpath(full, root)] = f.read()
    return out


def test_photo_set_layouts_modes_and_determinism(tmp_path, fake_wheel):
    a = photos.photo_set(count=8, seed=3, cache_dir=str(tmp_path / 'a'), wheel=fake_wheel)
    assert a.count == 8 and a.root.endswith('photos-s3-n8')
    listed = layouts.ListDataset(a.list_path, a.root)
    folders = layouts.FolderDataset(a.train_dir)
    assert len(listed) == len(folders) == 8
    # Both layouts give each file the same label.
    by_path = dict(zip(folders.paths, folders.labels))
    assert all(by_path[p] == label for p, label in zip(listed.paths, listed.labels))
    modes = sorted(Image.open(p).mode for p in listed.paths)
    assert modes.count('L') >= 1 and modes.count('CMYK') >= 1 and 'RGB' in modes
    assert all(Image.open(p).format == 'JPEG' for p in listed.paths)
    image, _ = listed[0]
    assert image.dtype == numpy.uint8 and image.shape[2] == 3
    assert sum(a.manifest['stats']['modes'].values()) == 8
    # Same seed and sources: byte-identical files; another seed: others.
    b = photos.photo_set(count=8, seed=3, cache_dir=str(tmp_path / 'b'), wheel=fake_wheel)
    files_a, files_b = _files(a.root), _files(b.root)
    files_a.pop('manifest.json'), files_b.pop('manifest.json')
    assert files_a == files_b
    c = photos.photo_set(count=8, seed=4, cache_dir=str(tmp_path / 'a'), wheel=fake_wheel)
    assert _files(c.train_dir) != _files(a.train_dir)


def test_photo_set_cache_is_checked_and_rebuilt(tmp_path, fake_wheel):
    cache = str(tmp_path)
    first = photos.photo_set(count=6, seed=0, cache_dir=cache, wheel=fake_wheel)
    build_id = os.stat(os.path.join(first.root, 'manifest.json')).st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        # Intact: no rebuild, and no wheel needed.
        again = photos.photo_set(count=6, seed=0, cache_dir=cache, wheel='/nonexistent.whl')
    assert os.stat(os.path.join(again.root, 'manifest.json')).st_mtime_ns == build_id
    victim = os.path.join(first.root, sorted(first.manifest['files'])[0])
    with open(victim, 'r+b') as f:
        f.truncate(10)
    assert 'has 10 bytes' in photos.check(first.root, 6, 0)
    with pytest.warns(UserWarning, match='damaged'):
        photos.photo_set(count=6, seed=0, cache_dir=cache, wheel=fake_wheel)
    assert photos.check(first.root, 6, 0) is None
    assert not [n for n in os.listdir(cache) if '.tmp-' in n]


def test_photo_sources_need_a_colour_photograph(tmp_path):
    path = str(tmp_path / 'empty.whl')
    with zipfile.ZipFile(path, 'w') as wheel:
        wheel.writestr('skimage/data/README.txt', 'nothing')
    with pytest.raises(photos.PhotoError, match='none of the colour photographs'):
        photos.read_sources(path)


def test_sample_size_follows_the_documented_mixture():
    rng = numpy.random.default_rng(0)
    sizes = numpy.array([photos.sample_size(rng) for _ in range(4000)])
    long_side, short_side = sizes.max(axis=1), sizes.min(axis=1)
    assert abs((long_side == 500).mean() - 0.58) < 0.03
    assert abs((long_side >= 1000).mean() - 0.04) < 0.015
    assert abs((sizes[:, 1] > sizes[:, 0]).mean() - 0.25) < 0.03
    assert ((long_side == 500) & (short_side == 375)).mean() > 0.3
    assert short_side.min() >= 1 and long_side.max() <= 1600


def test_tree_cpu_seconds_counts_a_busy_child():
    child = subprocess.Popen(
        [sys.executable, '-c',
         'import time\nwhile time.process_time() < 0.3: pass\nprint("done", flush=True)\n'
         'time.sleep(30)'], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        before = loader.tree_cpu_seconds()
        assert child.stdout.readline().strip() == 'done'
        after = loader.tree_cpu_seconds()
    finally:
        child.kill()
        child.wait()
    assert after - before >= 0.25


def test_stage_rerun_equals_train_transform_and_uint8_variant(tmp_path, fake_wheel):
    photo_set = photos.photo_set(count=6, seed=1, cache_dir=str(tmp_path), wheel=fake_wheel)
    tf = loader.train_transform()
    base, dataset, sampler = loader.our_dataset(photo_set, tf)
    order = sampler(numpy.arange(len(dataset)), 0)
    # our_stages raises if its step-by-step re-run differs from TrainTransform.
    stages, draft, n = loader.our_stages(base, tf, order, 6)
    assert n == 6 and len(stages) == 7 and all(v >= 0 for v in stages.values())
    assert 0 <= draft['reduced'] <= 6
    u8 = loader.Uint8TrainTransform(loader.CROP, transforms.IMAGENET_MEAN,
                                    transforms.IMAGENET_STD)
    image = layouts.read_image(base.paths[0])
    out = u8(image, numpy.random.default_rng(7))
    assert out.dtype == numpy.uint8 and out.shape == (3, loader.CROP, loader.CROP)
    numpy.testing.assert_array_equal(tf.normalize(out.transpose(1, 2, 0)),
                                     tf(image, numpy.random.default_rng(7)))


@pytest.mark.slow
def test_loader_benchmark_runs_end_to_end_on_a_tiny_set(tmp_path, fake_wheel):
    out = tmp_path / 'loader.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, 'loader.py'), '--count', '8',
         '--cache-dir', str(tmp_path), '--wheel', fake_wheel, '--workers', '1',
         '--batches', '1', '--warmup', '1', '--stage-images', '4', '--no-torch',
         '--json', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=240, env=_clean_env())
    assert proc.returncode == 0, proc.stdout
    for text in ('| ours: MultiprocessIterator + concat_examples | 1 |', 'goals (per core',
                 'ours, stage by stage', 'short profile', 'torchvision: skipped'):
        assert text in proc.stdout
    result = json.loads(out.read_text())
    assert [r['name'] for r in result['rows']][:3] == [
        'decode only (PIL open + load)', 'read_image (decode + RGB + array)',
        'ours: read_image + TrainTransform(224)']


def test_prepare_benchmark_runs_end_to_end_on_a_tiny_set(tmp_path, fake_wheel):
    work = tmp_path / 'work'
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, 'prepare.py'), '--count', '8', '--copies',
         '2', '--classes', '2', '--modes', 'none,square', '--size', '16', '--cache-dir',
         str(tmp_path), '--wheel', fake_wheel, '--work', str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    # 16 images: every 8th round over the 2 classes goes to the validation archive.
    assert lines[0].startswith('16 images (14 train in 2 classes, 2 val)')
    assert [line.split()[0] for line in lines[2:]] == ['none', 'square']
    assert not work.exists()


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_PREFIXES)}
    env.pop('GPU_CHECK_DRY_RUN', None)
    env.update(extra)
    return env


def _dry_run(args, tmp_path, **env):
    start = time.perf_counter()
    proc = subprocess.run(
        ['bash', os.path.join(BENCHMARKS, 'gpu_check.sh')] + args,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=240, cwd=ROOT,
        env=_clean_env(**dict({'GPU_CHECK_PYTHON': sys.executable, 'TMPDIR': str(tmp_path)},
                              **env)))
    return proc, time.perf_counter() - start


def _report(text):
    assert '==== chainer_resnet GPU check: report ====' in text, text
    report = text.split('==== chainer_resnet GPU check: report ====', 1)[1]
    assert '==== end of report ====' in report, text
    return report.split('==== end of report ====')[0]


GPU_ITEMS = ('gpu tests (pytest -m gpu tests)', 'chainer step 224x224 b32 fp32, cuDNN',
             'chainer step 224x224 b32 fp32, use_cudnn=never',
             'pytorch step 224x224 b32 fp32 (torchvision resnet50, SGD)',
             'pure_nccl fp16 allreduce, world size 1',
             'chainer step 224x224 b32 fp32, cuDNN untuned (8 MiB)')


def _check_dry_report(report):
    lines = report.splitlines()
    for item in GPU_ITEMS:
        line = next(x for x in lines if item in x)
        assert line.startswith('SKIP') and '(no GPU: dry run)' in line, line
    for item in ('rehearsal: chainer step on CPU', 'rehearsal: naive allreduce on CPU',
                 'rehearsal: pytest -m gpu tests on CPU'):
        line = next(x for x in lines if item in x)
        assert line.startswith('OK'), report
    assert not [x for x in lines if x.startswith('FAIL')], report
    assert any(x.startswith('total: ') for x in lines)


def test_gpu_check_dry_run_without_wheelhouse_says_so_and_exits_0(tmp_path):
    proc, _ = _dry_run(['--dry-run'], tmp_path, GPU_CHECK_WHEELHOUSE=str(tmp_path / 'none'))
    assert proc.returncode == 0, proc.stdout
    report = _report(proc.stdout)
    env_line = next(x for x in report.splitlines() if x.startswith('SKIP  env'))
    assert 'wheelhouse missing' in env_line and 'make wheelhouse' in env_line
    _check_dry_report(report)


@pytest.mark.slow
def test_gpu_check_dry_run_builds_the_env_from_the_wheelhouse(tmp_path):
    wheelhouse = os.path.join(ROOT, 'wheelhouse')
    if not os.path.isdir(wheelhouse) or not any(
            n.endswith('.whl') for n in os.listdir(wheelhouse)):
        pytest.skip('no wheelhouse/ (make wheelhouse)')
    proc, _ = _dry_run([], tmp_path, GPU_CHECK_DRY_RUN='1')
    assert proc.returncode == 0, proc.stdout
    report = _report(proc.stdout)
    assert any(x.startswith('OK    env') for x in report.splitlines()), report
    _check_dry_report(report)


def test_gpu_check_rejects_unknown_arguments():
    proc = subprocess.run(['bash', os.path.join(BENCHMARKS, 'gpu_check.sh'), '--bogus'],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=30)
    assert proc.returncode == 2 and 'unknown argument' in proc.stdout


def _wheel_of_installed(name, folder):
    """A wheel of the installed distribution `name`, from its own RECORD, in `folder`.

    What `make wheelhouse` would download, without a download: the files as
    installed (those outside site-packages, such as console scripts, left out),
    with the WHEEL tag the installer recorded.
    """
    import base64
    import hashlib
    from importlib import metadata
    dist = metadata.distribution(name)
    info = next(f for f in dist.files if f.name == 'METADATA').parent
    tag = next(line.split(': ', 1)[1] for line in
               dist.locate_file(info / 'WHEEL').read_text().splitlines()
               if line.startswith('Tag: '))
    wheel_name = '{}-{}-{}.whl'.format(dist.metadata['Name'].replace('-', '_'),
                                       dist.version, tag)
    record = []
    with zipfile.ZipFile(os.path.join(folder, wheel_name), 'w') as wheel:
        for f in dist.files:
            path = str(f)
            if path.startswith('..') or '__pycache__' in path or f.name in (
                    'RECORD', 'INSTALLER', 'REQUESTED', 'direct_url.json'):
                continue
            data = dist.locate_file(f).read_bytes()
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=')
            record.append('{},sha256={},{}'.format(path, digest.decode(), len(data)))
        record.append('{}/RECORD,,'.format(info))
        wheel.writestr('{}/RECORD'.format(info), '\n'.join(record) + '\n')


@pytest.mark.slow
def test_gpu_check_installs_chainer_pytest_and_pillow_where_mpi_cannot(tmp_path):
    # A GPU machine's Python with NumPy only (no chainer, pytest, Pillow, mpi4py), and
    # a wheelhouse whose mpi4py is for another Python: chainer, pytest and Pillow
    # still come from the wheelhouse, and only the allreduce item says MPI is missing.
    import sysconfig
    machine = tmp_path / 'machine'
    subprocess.run([getattr(sys, '_base_executable', sys.executable), '-m', 'venv',
                    '--without-pip', str(machine)], check=True, timeout=120)
    numpy_only = tmp_path / 'numpy-only'
    numpy_only.mkdir()
    site = sysconfig.get_paths()['purelib']
    for entry in os.listdir(site):
        if entry == 'numpy' or entry.startswith('numpy-') or entry == 'numpy.libs':
            os.symlink(os.path.join(site, entry), str(numpy_only / entry))
    machine_site = subprocess.run(
        [str(machine / 'bin' / 'python'), '-c',
         'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    with open(os.path.join(machine_site, 'numpy_only.pth'), 'w') as f:
        f.write(str(numpy_only) + '\n')
    wheelhouse = tmp_path / 'wheelhouse'
    wheelhouse.mkdir()
    # What `make wheelhouse` holds (WHEELHOUSE_PURE and WHEELHOUSE_BIN but MPI).
    for name in ('chainer', 'filelock', 'typing_extensions', 'six', 'protobuf', 'setuptools',
                 'pytest', 'iniconfig', 'pluggy', 'packaging', 'pygments', 'pillow'):
        _wheel_of_installed(name, str(wheelhouse))
    # mpi4py for a Python that is not this one: pip finds no wheel it can install.
    with zipfile.ZipFile(str(wheelhouse / 'mpi4py-4.1.2-cp39-cp39-manylinux_2_17_x86_64.whl'),
                         'w') as wheel:
        wheel.writestr('mpi4py/__init__.py', '')
    proc, _ = _dry_run(['--dry-run'], tmp_path, GPU_CHECK_PYTHON=str(machine / 'bin' / 'python'),
                       GPU_CHECK_WHEELHOUSE=str(wheelhouse), PATH='/usr/bin:/bin')
    assert proc.returncode == 0, proc.stdout
    report = _report(proc.stdout).splitlines()
    env = next(x for x in report if x.startswith(('OK    env', 'FAIL  env')))
    assert env.startswith('OK') and 'MPI missing' in env, proc.stdout
    stack = next(x for x in report if x.startswith('INFO  stack'))
    assert 'chainer 7.8.1' in stack and 'pytest ' in stack and 'mpi4py absent' in stack
    assert next(x for x in report if 'rehearsal: pytest -m gpu' in x).startswith('OK'), report
    assert next(x for x in report if 'rehearsal: chainer step' in x).startswith('OK'), report
    failed = [x for x in report if x.startswith('FAIL')]
    assert len(failed) == 1 and 'naive allreduce' in failed[0], report
    assert 'MPI missing' in failed[0] and 'WHEELHOUSE_PYTHON=' in failed[0]
