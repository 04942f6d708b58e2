"""Costs that must not grow with the number of ranks (issue 10), counted on 2 CPU cores.

At 1,024 ranks a per-rank cost that is O(dataset) or O(world size) on rank 0
is what stops a launch (field-notes.md, "What grows with the number of
ranks"). Each case launches MPICH's mpiexec from the virtualenv inside a
timeout, in its own process group, and fails if a process of the launch is
left behind:

- start-up at -n 4 on a list of 100,000 images: each rank's filesystem
  metadata calls are its shard, not the list (tests/scale_probe.py counts
  them; the negative control, every rank checking every image, is >= 100,000),
  and with class folders only rank 0 walks them;
- resume: what rank 0 sends does not grow from -n 2 to -n 4 (the control, a
  serial fan-out, does), and a stopped and resumed -n 4 run of the trainer
  equals an uninterrupted one;
- -n 8 ranks on 2 cores: the smoke run finishes, evaluates each of 37
  validation images exactly once (an uneven split), and resumes.

Timings are in benchmarks/scale.py, not here.
"""

import json
import os
import re
import sys

import numpy
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import launching  # noqa: E402  (tests/launching.py)
from run_mpi import mpiexec  # noqa: E402

MPIEXEC = mpiexec()
PROBE = os.path.join(HERE, 'scale_probe.py')
# One BLAS thread per rank: up to 8 ranks share 2 cores.
ENV = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
# A PrintReport row: epoch and iteration first (after a terminal escape).
PRINTED_ROW = re.compile(r'^(?:\x1b\[J)?(\d+)\s+(\d+)\s', re.M)
LIST_IMAGES = 100000
# Start-up calls a rank may make besides its shard: the list files, the root,
# the dataset path tests of open_dataset.
STARTUP_SLACK = 16
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MPIEXEC is None, reason='no mpiexec found')]


def launch(cmd, timeout):
    """Run `cmd` in a process group of its own (tests/launching.py); (exit status, output)."""
    return launching.launch(cmd, timeout, env=ENV)


def probe(n, *args, timeout=180):
    """Run tests/scale_probe.py on `n` ranks; its JSON result."""
    out = args[1]
    code, text = launch([MPIEXEC, '-n', str(n), sys.executable, PROBE] + list(args),
                        timeout)
    assert code == 0, text
    with open(out) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data'))


def trainer_cmd(out, data_cache, n, *extra):
    return [MPIEXEC, '-n', str(n), sys.executable, os.path.join(ROOT, 'train_imagenet.py'),
            '--recipe', 'smoke', '--out', str(out), '--data-cache', data_cache,
            '--loaderjobs', '0', '--no-progress'] + list(extra)


def train(out, data_cache, n, *extra, timeout=300):
    code, text = launch(trainer_cmd(out, data_cache, n, *extra), timeout)
    assert code == 0, text
    return text


def status(out):
    """(iteration, complete) from the run's status.json."""
    with open(os.path.join(str(out), 'status.json')) as f:
        st = json.load(f)
    return st['iteration'], st['complete']


def evaluations(out):
    with open(os.path.join(str(out), 'log')) as f:
        return [e for e in json.load(f) if 'validation/main/images' in e]


def assert_same_model(a, b):
    with numpy.load(os.path.join(str(a), 'model.npz')) as x, \
            numpy.load(os.path.join(str(b), 'model.npz')) as y:
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:
            numpy.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------
# Start-up

def _list_dataset(tmp_path):
    """A list of 100,000 training and 1,000 validation images (not created: the probe
    makes paths under the root exist)."""
    root = tmp_path / 'images'
    root.mkdir()
    for name, count in (('train.txt', LIST_IMAGES), ('val.txt', 1000)):
        (tmp_path / name).write_text(''.join(
            'n{:03d}/img_{:07d}.JPEG {}\n'.format(i % 10, i, i % 10) for i in range(count)))
    return str(tmp_path / 'train.txt'), str(tmp_path / 'val.txt'), str(root)


def _class_folders(tmp_path):
    """Class folders of 400 training and 100 validation (empty) images."""
    for split, per_class in (('train', 40), ('val', 10)):
        for label in range(10):
            folder = tmp_path / split / 'c{}'.format(label)
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / '{}.JPEG'.format(i)).touch()
    return str(tmp_path / 'train'), str(tmp_path / 'val'), str(tmp_path)


@pytest.mark.parametrize('layout', ['list', 'folders'])
def test_startup_metadata_calls_per_rank_are_its_shard_not_the_dataset(tmp_path, layout):
    train, val, root = (_list_dataset if layout == 'list' else _class_folders)(tmp_path)
    result = probe(4, 'startup', str(tmp_path / 'counts.json'), '--train', train,
                   '--val', val, '--root', root, timeout=240)
    new, old = result['startup'], result['control']
    assert [r['rank'] for r in new] == [0, 1, 2, 3]
    images = LIST_IMAGES if layout == 'list' else 400
    # Rank 0 also walks the class folders once for the job: a test and a
    # listing per folder (20 of them), not a call per image.
    walk = [0 if layout == 'list' else 3 * 20] + [0] * 3
    for rank in new:
        assert rank['train_shard'] == images // 4, rank
        assert rank['metadata_calls'] <= (rank['train_shard'] + rank['val_shard']
                                          + STARTUP_SLACK + walk[rank['rank']]), rank
    # The index comes from rank 0: the other ranks list no folder and send nothing.
    for rank in new[1:]:
        assert rank['counts']['listdir'] == rank['counts']['scandir'] == 0, rank
        assert rank['bytes_sent'] == 0, rank
    # Negative control: every rank checks every listed image, or walks every folder.
    for rank in old:
        if layout == 'list':
            assert rank['metadata_calls'] >= LIST_IMAGES, rank
        else:
            assert rank['counts']['scandir'] >= 20, rank


# ---------------------------------------------------------------------------
# Resume

def test_what_rank0_sends_to_resume_does_not_grow_with_the_world_size(tmp_path):
    results = {n: probe(n, 'resume', str(tmp_path / 'n{}.json'.format(n)),
                        '--work', str(tmp_path / 'n{}'.format(n)))
               for n in (2, 4)}
    for n, result in results.items():
        for rank in result['resume'] + result['control']:
            assert rank['size'] == n and rank['resumed_iteration'] == 2, rank
            assert rank['same_state'] and not rank['same_state_before'], rank
    root2, root4 = results[2]['resume'][0], results[4]['resume'][0]
    assert root2['calls'] == root4['calls'], (root2, root4)
    for root in (root2, root4):
        # The file once, plus a few hundred bytes of metadata (its size, the path).
        assert 0 <= root['bytes_sent'] - root['snapshot_bytes'] < 4096, root
    assert all(r['bytes_sent'] == 0 for n in (2, 4) for r in results[n]['resume'][1:])
    # Negative control: a serial fan-out sends the file once per other rank.
    fan2, fan4 = results[2]['control'][0], results[4]['control'][0]
    assert fan2['calls']['Send'] == 1 and fan4['calls']['Send'] == 3
    assert fan4['bytes_sent'] >= 3 * fan4['snapshot_bytes']


def test_stop_and_resume_at_four_ranks_equals_an_uninterrupted_run(tmp_path, data_cache):
    # 8 iterations at -n 4; a snapshot every 4 (each is ~300 MB to write).
    extra = ['--set', 'epochs=4', '--set', 'snapshot_interval_epochs=2']
    train(tmp_path / 'reference', data_cache, 4, *extra)
    out = tmp_path / 'chunks'
    train(out, data_cache, 4, *extra, '--stop-after-iters', '4')
    assert status(out) == (4, False)
    second = train(out, data_cache, 4, *extra, '--stop-after-iters', '4')   # the same command
    printed = [int(m.group(2)) for m in PRINTED_ROW.finditer(second)]
    assert printed and min(printed) > 4, 'the re-launch started from scratch'
    assert status(out) == (8, True)
    assert_same_model(tmp_path / 'reference', out)


# ---------------------------------------------------------------------------
# Many ranks on few cores

def test_eight_ranks_evaluate_each_image_once_with_an_uneven_split_and_resume(
        tmp_path, data_cache):
    # 37 validation images over 8 ranks: 4 or 5 each. 64 training images in
    # global batches of 16: 4 iterations an epoch, 8 in all.
    extra = ['--set', 'crop_size=16', '--set', 'batch_per_worker=2',
             '--set', 'val_subset=37']
    out = tmp_path / 'run'
    first = train(out, data_cache, 8, *extra, '--stop-after-iters', '4', timeout=400)
    assert 'workers=8' in first and status(out) == (4, False)
    second = train(out, data_cache, 8, *extra, timeout=400)
    printed = [int(m.group(2)) for m in PRINTED_ROW.finditer(second)]
    assert printed and min(printed) > 4, 'the re-launch started from scratch'
    assert status(out) == (8, True)
    evaluated = evaluations(out)
    assert [e['iteration'] for e in evaluated] == [4, 8]
    assert [e['validation/main/images'] for e in evaluated] == [37, 37]
