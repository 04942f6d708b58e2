"""Tests for chainer_resnet.data.stats: compute_mean_std and its command."""

import os
import subprocess
import sys

import numpy
import pytest

from chainer_resnet import recipes
from chainer_resnet.data import demo as demo_data
from chainer_resnet.data import layouts, stats


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp('demo_cache')
    return demo_data.demo_dataset(cache_dir=str(cache))


def test_compute_mean_std_oracle():
    rng = numpy.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 7, 3), dtype=numpy.uint8)
              for h in (5, 9, 3)]
    pixels = numpy.concatenate([x.reshape(-1, 3) for x in images]) / 255
    mean, std = stats.compute_mean_std([(x, 0) for x in images])
    numpy.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)
    # bare images, and a subset: first and last of three
    mean, _ = stats.compute_mean_std(images, max_images=2)
    subset = numpy.concatenate([images[0].reshape(-1, 3),
                                images[2].reshape(-1, 3)]) / 255
    numpy.testing.assert_allclose(mean, subset.mean(axis=0), rtol=1e-12)


def test_compute_mean_std_of_demo_is_mnist_like(demo):
    mean, std = stats.compute_mean_std(layouts.ListDataset(demo.val_list, demo.root))
    assert mean[0] == mean[1] == mean[2]
    assert 0.1 < mean[0] < 0.16 and 0.25 < std[0] < 0.35


# ---------------------------------------------------------------------------
# python -m chainer_resnet.data.stats

def overrides(out):
    """The ``--set`` assignments of the command's last line."""
    words = out.strip().splitlines()[-1].split()
    assert words[0::2] == ['--set', '--set']
    return words[1::2]


def assert_recipe_takes(out, dataset, max_images=None):
    """The printed overrides, applied as the trainer applies ``--set``, give
    the statistics computed directly (to the 6 digits printed)."""
    mean, std = stats.compute_mean_std(dataset, max_images=max_images)
    recipe = recipes.resolve('demo', overrides(out))
    numpy.testing.assert_allclose(recipe.mean, mean, rtol=1e-5)
    numpy.testing.assert_allclose(recipe.std, std, rtol=1e-5)
    # Negative control: the demo recipe's own values are ImageNet's.
    assert not numpy.allclose(recipes.get('demo').mean, mean, rtol=1e-2)


def test_command_prints_mean_std_and_the_recipe_overrides(demo, capsys):
    assert stats.main([demo.val_list]) == 0
    out, err = capsys.readouterr()
    assert err == ''
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0] == 'images: 1000 of 1000 in {}'.format(demo.val_list)
    mean, std = stats.compute_mean_std(layouts.ListDataset(demo.val_list, demo.root))
    assert lines[1].startswith('mean (RGB, [0, 1] units): ')
    assert lines[2].startswith('std  (RGB, [0, 1] units): ')
    numpy.testing.assert_allclose([float(v) for v in lines[1].split()[-3:]], mean, rtol=1e-5)
    numpy.testing.assert_allclose([float(v) for v in lines[2].split()[-3:]], std, rtol=1e-5)
    assert_recipe_takes(out, layouts.ListDataset(demo.val_list, demo.root))


def test_command_reads_class_folders_and_evenly_spaced_images(demo, capsys):
    assert stats.main([demo.val_dir, '--max-images', '50']) == 0
    out = capsys.readouterr().out
    assert out.startswith('images: 50 of 1000 in {}\n'.format(demo.val_dir))
    assert_recipe_takes(out, layouts.FolderDataset(demo.val_dir), max_images=50)


def test_command_list_paths_are_relative_to_root(demo, tmp_path, capsys):
    with open(demo.val_list) as f:
        head = f.readlines()[::100]                    # one image of each digit
    listed = tmp_path / 'ten.txt'
    listed.write_text(''.join(head))
    assert stats.main([str(listed), '--root', demo.root]) == 0
    out = capsys.readouterr().out
    assert out.startswith('images: 10 of 10')
    assert_recipe_takes(out, layouts.ListDataset(str(listed), demo.root))
    # Negative control: without --root the paths are looked up next to the list.
    assert stats.main([str(listed)]) == 2
    out, err = capsys.readouterr()
    assert out == '' and len(err.splitlines()) == 1
    assert err.startswith('error: 10 of the 10 images listed in {}'.format(listed))


def test_command_missing_path_is_a_one_line_error(tmp_path, capsys):
    missing = str(tmp_path / 'nope.txt')
    assert stats.main([missing]) == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert len(err.splitlines()) == 1
    assert err.startswith('error: list file {} does not exist.'.format(missing))


@pytest.mark.parametrize('value', ['0', '-3', 'many'])
def test_command_rejects_a_bad_max_images(demo, capsys, value):
    with pytest.raises(SystemExit) as info:
        stats.main([demo.val_list, '--max-images', value])
    assert info.value.code == 2
    assert '--max-images' in capsys.readouterr().err


def test_command_runs_as_a_module(demo):
    done = subprocess.run(
        [sys.executable, '-m', 'chainer_resnet.data.stats', demo.val_dir,
         '--max-images', '20'],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(demo.root))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ''                            # no runpy warning either
    assert_recipe_takes(done.stdout, layouts.FolderDataset(demo.val_dir), max_images=20)
    missing = subprocess.run(
        [sys.executable, '-m', 'chainer_resnet.data.stats', 'nope.txt'],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(demo.root))
    assert missing.returncode == 2
    assert missing.stderr.startswith('error: list file nope.txt does not exist.')
