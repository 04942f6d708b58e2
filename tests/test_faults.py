"""Fault injection: a failed run never looks like a success, bad data never hangs.

Each case launches the real trainer on 2 CPU ranks (``mpiexec -n 2``, the smoke
recipe) inside a timeout, injects one fault, and asserts the exit status, the
message, that no process of the launch is left, and that nothing good was
deleted. Images come from the embedded demo dataset, copied into a small list
dataset of 64 training and 40 validation images that each case may damage.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import launching  # noqa: E402  (tests/launching.py)
from run_mpi import mpiexec  # noqa: E402

MPIEXEC = mpiexec()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MPIEXEC is None, reason='no mpiexec found')]


@pytest.fixture(scope='module')
def demo_lists(tmp_path_factory):
    """(train list, val list, root) of the demo dataset, built once for the module."""
    from chainer_resnet.data import demo
    data = demo.demo_dataset(cache_dir=str(tmp_path_factory.mktemp('data')))
    return data


@pytest.fixture
def small_data(tmp_path, demo_lists):
    """A list dataset of 64 training and 40 validation images, copied so a case may damage it."""
    root = tmp_path / 'images'
    lists = {}
    for split, source, count in (('train', demo_lists.train_list, 64),
                                 ('val', demo_lists.val_list, 40)):
        with open(source) as f:
            lines = [line.split() for line in f if line.strip()]
        # Every 10th line: all ten classes in a few images.
        chosen = lines[::len(lines) // count][:count]
        out_lines = []
        for relative, label in chosen:
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.join(demo_lists.root, relative), target)
            out_lines.append('{} {}\n'.format(relative, label))
        lists[split] = tmp_path / '{}.txt'.format(split)
        lists[split].write_text(''.join(out_lines))
    return {'train': str(lists['train']), 'val': str(lists['val']), 'root': str(root)}


def trainer_cmd(out, data, *extra, n=2):
    return [MPIEXEC, '-n', str(n), sys.executable, os.path.join(ROOT, 'train_imagenet.py'),
            '--recipe', 'smoke', '--out', str(out), '--train', data['train'],
            '--val', data['val'], '--root', data['root'], '--loaderjobs', '0',
            '--no-progress', '--set', 'train_subset=none', '--set', 'val_subset=none',
            '--set', 'train_images=64', '--set', 'epochs=4'] + list(extra)


def launch(cmd, timeout=240):
    """Run `cmd` in its own process group; (exit status, output); fails if anything is left."""
    return launching.launch(cmd, timeout)


def snapshot_files(out):
    return sorted(name for name in os.listdir(out) if name.startswith('snapshot_iter_'))


def test_divergence_stops_every_rank_and_keeps_the_last_finite_snapshot(tmp_path, small_data):
    out = tmp_path / 'run'
    # A snapshot every iteration, so that there is a last finite one to keep.
    code, text = launch(trainer_cmd(out, small_data, '--set', 'lr_per_256=1e6',
                                    '--set', 'snapshot_interval_epochs=0.25'))
    assert code == 3, text
    assert 'error: training diverged at iteration' in text
    assert 'validation top-1' not in text and 'Training complete' not in text
    status = json.loads((out / 'status.json').read_text())
    assert status['complete'] is False and status['failed'] == 'diverged'
    assert 'lr_per_256' in status['error']
    assert not (out / 'model.npz').exists()      # a non-finite model is never written
    kept = snapshot_files(out)
    assert kept and status['snapshot'].endswith(kept[-1])
    with numpy.load(str(out / kept[-1])) as f:   # the kept snapshot is finite
        for name in f.files:
            if f[name].dtype.kind == 'f':
                assert numpy.isfinite(f[name]).all(), name


def _damage(data, how, split='train'):
    """Damage the first image of the `split` list; return its path."""
    with open(data[split]) as f:
        relative = f.readline().split()[0]
    path = os.path.join(data['root'], relative)
    if how == 'empty':
        open(path, 'wb').close()
    else:
        with open(path, 'rb') as f:
            head = f.read()
        with open(path, 'wb') as f:
            f.write(head[:len(head) // 2])
    return path


@pytest.mark.parametrize('loaderjobs, how, split', [
    ('0', 'empty', 'train'), ('1', 'empty', 'train'), ('0', 'truncated', 'train'),
    ('1', 'truncated', 'train'), ('0', 'empty', 'val'), ('1', 'truncated', 'val')])
def test_an_unreadable_image_ends_the_job_naming_the_file(tmp_path, small_data, how,
                                                          loaderjobs, split):
    path = _damage(small_data, how, split)
    code, text = launch(trainer_cmd(tmp_path / 'run', small_data, '--loaderjobs', loaderjobs,
                                    '--stop-after-iters', '8'), timeout=180)
    assert code == 2, text
    # One rank reads the file; rank 0 says it once for the job, and no rank aborts.
    errors = [line for line in text.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and os.path.basename(path) in errors[0], text
    assert '--skip-bad-images' in errors[0] and 'of 2 ranks (rank ' in errors[0]
    assert 'Stalled dataset' not in text and 'Abort' not in text, text
    assert 'Traceback' not in text, text


def test_skip_bad_images_trains_on_and_check_images_reports(tmp_path, small_data):
    path = _damage(small_data, 'empty')
    out = tmp_path / 'run'
    code, text = launch(trainer_cmd(out, small_data, '--skip-bad-images', '1',
                                    '--check-images', '--loaderjobs', '1'))
    assert code == 0, text
    assert os.path.basename(path) in text and 'check-images: 1 unreadable' in text
    assert json.loads((out / 'status.json').read_text())['complete'] is True
    # Without the allowance the preflight stops before training.
    code, text = launch(trainer_cmd(tmp_path / 'strict', small_data, '--check-images'))
    assert code == 2 and '--check-images found 1 unreadable' in text, text
    assert not os.path.exists(tmp_path / 'strict' / 'log')


def test_mismatched_class_folders_are_a_clear_error(tmp_path, demo_lists):
    train, val = tmp_path / 'train', tmp_path / 'val'
    for tree, classes in ((train, '012'), (val, '01')):
        for digit in classes:
            (tree / digit).mkdir(parents=True)
            for name in sorted(os.listdir(os.path.join(demo_lists.train_dir, digit)))[:4]:
                shutil.copy(os.path.join(demo_lists.train_dir, digit, name), tree / digit)

    def cmd(num_classes):
        return [MPIEXEC, '-n', '2', sys.executable, os.path.join(ROOT, 'train_imagenet.py'),
                '--recipe', 'smoke', '--out', str(tmp_path / 'run'), '--train', str(train),
                '--val', str(val), '--loaderjobs', '0', '--no-progress',
                '--set', 'num_classes={}'.format(num_classes),
                '--set', 'train_subset=none', '--set', 'val_subset=none']

    code, text = launch(cmd(3), timeout=120)
    assert code == 2, text
    assert '1 missing (2)' in text and str(val) in text   # the missing class, and where
    code, text = launch(cmd(10), timeout=120)        # 3 folders for a 10-class recipe
    assert code == 2 and 'num_classes' in text, text


def test_a_corrupt_newest_snapshot_falls_back_to_the_previous_one(tmp_path, small_data):
    out = tmp_path / 'run'
    code, text = launch(trainer_cmd(out, small_data, '--stop-after-iters', '8'))
    assert code == 0, text
    assert snapshot_files(out) == ['snapshot_iter_4.0', 'snapshot_iter_8.0']
    newest = out / 'snapshot_iter_8.0'
    newest.write_bytes(newest.read_bytes()[:1000])       # truncated, as by a crash
    (out / '.tmp-snapshot_iter_12.0-999').write_bytes(b'partial')   # a killed write
    code, text = launch(trainer_cmd(out, small_data))
    assert code == 0, text
    assert 'cannot load {}'.format(newest) in text and 'trying the previous one' in text
    assert 'removed 1 temporary file' in text
    assert not (out / '.tmp-snapshot_iter_12.0-999').exists()
    log = json.loads((out / 'log').read_text())
    assert [e['iteration'] for e in log] == sorted({e['iteration'] for e in log})
    assert json.loads((out / 'status.json').read_text())['complete'] is True


def test_resume_with_another_world_size_or_recipe_is_refused(tmp_path, small_data):
    out = tmp_path / 'run'
    code, text = launch(trainer_cmd(out, small_data, '--stop-after-iters', '4'))
    assert code == 0, text
    recipe_before = (out / 'recipe.json').read_text()
    code, text = launch(trainer_cmd(out, small_data, n=1))
    assert code == 2, text
    assert 'written by a run of 2 rank(s); this launch has 1' in text
    # A snapshot that cannot be loaded stops both ranks together: rank 0 says it
    # once and nobody aborts (an MPI_Abort can cut the message off).
    code, text = launch(trainer_cmd(out, small_data, '--resume', str(out / 'missing.0')))
    assert code == 2, text
    assert text.count('cannot resume from --resume') == 1 and 'MPI_Abort' not in text, text
    code, text = launch(trainer_cmd(out, small_data, '--set', 'lr_per_256=0.3'))
    assert code == 2 and 'lr_per_256: 0.2 -> 0.3' in text, text
    assert (out / 'recipe.json').read_text() == recipe_before   # never silently overwritten
    code, text = launch(trainer_cmd(out, small_data, '--set', 'lr_per_256=0.3',
                                    '--allow-recipe-change', '--stop-after-iters', '2'))
    assert code == 0, text
    assert json.loads((out / 'recipe.json').read_text())['lr_per_256'] == 0.3
    assert (out / 'recipe.4.json').read_text() == recipe_before


def _mount_tmpfs(path, size):
    path.mkdir()
    try:
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size={}'.format(size), 'tmpfs',
                        str(path)], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip('cannot mount a tmpfs here ({}): the full-disk case needs root'.format(e))


def test_a_full_output_folder_stops_cleanly_and_keeps_the_snapshot(tmp_path, small_data):
    out = tmp_path / 'small'
    _mount_tmpfs(out, '420m')            # one ~283 MB snapshot fits, a second does not
    try:
        code, text = launch(trainer_cmd(out, small_data))
        assert code == 2, text
        assert 'not enough free space' in text or 'cannot write' in text
        assert snapshot_files(out) == ['snapshot_iter_4.0']
        assert not [n for n in os.listdir(out) if n.startswith('.tmp-')]
    finally:
        subprocess.run(['umount', '-l', str(out)], capture_output=True, timeout=20)


KILLED_WRITER = """
import sys, time, numpy
from chainer_resnet import snapshots
real = numpy.savez
def slow(f, **arrays):
    f.write(b'PK' * 1000)
    f.flush()
    print('writing', flush=True)
    time.sleep(60)
numpy.savez = slow
snapshots.write_npz_atomic(sys.argv[1], {'w': numpy.ones(10)})
"""


def test_a_kill_during_the_model_write_leaves_the_old_model(tmp_path):
    from chainer_resnet import snapshots
    model = tmp_path / 'model.npz'
    snapshots.write_npz_atomic(str(model), {'w': numpy.zeros(10)})
    before = model.read_bytes()
    proc = subprocess.Popen([sys.executable, '-c', KILLED_WRITER, str(model)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'writing'
    finally:
        proc.kill()                                   # SIGKILL in the middle of the write
        proc.wait()
    assert model.read_bytes() == before               # readers still see the whole old model
    with numpy.load(str(model)) as f:
        numpy.testing.assert_array_equal(f['w'], numpy.zeros(10))
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith('.tmp-')]
    assert len(leftovers) == 1                        # the partial write, under a temporary name
    assert snapshots.remove_leftovers(str(tmp_path)) == leftovers
