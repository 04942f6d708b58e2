"""Fault injection: a failed run never looks like a success, bad data never hangs.

Each case launches the real trainer on 2 CPU ranks (``mpiexec -n 2``, the smoke
recipe) inside a timeout, injects one fault, and asserts the exit status, the
message, that no process of the launch is left, and that nothing good was
deleted. Images come from the embedded demo dataset, copied into a small list
dataset of 64 training and 40 validation images that each case may damage.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy
import pytest

from chainer_resnet import model_file

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


def copy_small_data(folder, demo_lists):
    """A list dataset of 64 training and 40 validation images in `folder`, copied so a
    case may damage it: {'train', 'val', 'root'}."""
    root = folder / 'images'
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
        lists[split] = folder / '{}.txt'.format(split)
        lists[split].write_text(''.join(out_lines))
    return {'train': str(lists['train']), 'val': str(lists['val']), 'root': str(root)}


@pytest.fixture
def small_data(tmp_path, demo_lists):
    """copy_small_data in this test's folder."""
    return copy_small_data(tmp_path, demo_lists)


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


# --- what a cluster does to a job: another job, the scheduler's signals, a dead or
# --- stalled process (issue 20). The smoke run below is the uninterrupted reference.

@pytest.fixture(scope='module')
def reference(tmp_path_factory, demo_lists):
    """The parameters of an uninterrupted run (16 iterations, 2 ranks)."""
    folder = tmp_path_factory.mktemp('reference')
    code, text = launch(trainer_cmd(folder / 'run', copy_small_data(folder, demo_lists)))
    assert code == 0, text
    return model_arrays(folder / 'run')


def model_arrays(out):
    with numpy.load(str(out / 'model.npz')) as f:
        return {name: f[name].copy() for name in f.files}


def assert_same_model(out, reference):
    """The same arrays, and the same description but for the data paths (each run's own)."""
    final = model_arrays(out)
    assert sorted(final) == sorted(reference)
    for name in reference:
        if name == model_file.META_KEY:
            described = [json.loads(str(d[name])) for d in (final, reference)]
            for d in described:
                d.pop('data')
            assert described[0] == described[1]
            continue
        numpy.testing.assert_array_equal(final[name], reference[name], err_msg=name)


def assert_loadable_snapshots(out):
    """Every snapshot in `out` is whole (a stop never leaves a damaged one)."""
    for name in snapshot_files(out):
        with numpy.load(str(out / name)) as f:
            assert f.files, name


def assert_one_clean_line(text, line):
    assert text.count(line) == 1, text
    for noise in ('Traceback', 'KeyboardInterrupt', 'MPI_Abort', 'BAD TERMINATION'):
        assert noise not in text, text


def test_a_second_job_on_the_same_out_is_refused_and_the_first_goes_on(tmp_path, small_data,
                                                                        reference):
    out = tmp_path / 'run'
    first = launching.Launch(trainer_cmd(out, small_data))
    first.wait_for(lambda: (out / 'log').exists())
    holder = first.ranks(str(out))[0]
    code, text = launch(trainer_cmd(out, small_data), timeout=180)
    assert code == 2, text
    assert_one_clean_line(text, 'error: the output folder {} is in use by another job: host {}, '
                          'process {}, '.format(out, socket.gethostname(), holder))
    assert 'Wait for that job to end' in text and '--take-over-lock' in text
    code, text = first.finish()
    assert code == 0, text
    assert json.loads((out / 'status.json').read_text())['complete'] is True
    assert_loadable_snapshots(out)
    assert_same_model(out, reference)                 # the first job was not disturbed


def _dead_holder(out):
    """Leave the record of a job on this host that no longer runs (killed, no clean-up)."""
    from chainer_resnet import runlock
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    record = dict(runlock.identity(), pid=proc.pid, beats=0, heartbeat=0)
    (out / runlock.FILENAME).write_text(json.dumps(record))
    return proc.pid


def test_sigterm_stops_every_rank_with_a_snapshot_and_the_run_resumes_bit_identical(
        tmp_path, small_data, reference):
    out = tmp_path / 'run'
    run = launching.Launch(trainer_cmd(out, small_data, '--loaderjobs', '1'))
    run.wait_for(lambda: (out / 'log').exists())
    run.ranks(str(out))                               # loaders included: none may be left
    run.signal(signal.SIGTERM)                        # Slurm's time limit, scancel, qdel
    code, text = run.finish()
    assert code == 143, text
    assert_one_clean_line(text, 'stop: got SIGTERM: every rank stops at the next iteration '
                          'boundary, with a snapshot')
    stopped = int(re.search(r'Stopped by SIGTERM at iteration (\d+)/16 \(re-launch to '
                            r'continue\)', text).group(1))
    status = json.loads((out / 'status.json').read_text())
    assert (status['stopped'], status['iteration'], status['complete']) == (
        'SIGTERM', stopped, False)
    assert snapshot_files(out)[-1] == 'snapshot_iter_{}.0'.format(stopped)
    # What a user or a crash may do between launches: rewritten, never in the way.
    (out / 'recipe.json').unlink()
    (out / 'status.json').write_text('{"garbage')
    code, text = launch(trainer_cmd(out, small_data, '--loaderjobs', '1'))
    assert code == 0, text
    assert json.loads((out / 'status.json').read_text())['complete'] is True
    assert json.loads((out / 'recipe.json').read_text())['name'] == 'smoke'
    assert_same_model(out, reference)
    # A re-launch of the finished run, over the lock record of a killed job.
    dead = _dead_holder(out)
    code, text = launch(trainer_cmd(out, small_data))
    assert code == 0, text
    assert 'taking over the lock of host {}, process {}'.format(socket.gethostname(),
                                                                 dead) in text
    assert 'that process no longer runs' in text and 'Training complete' in text
    assert_same_model(out, reference)                 # nothing trained again


def test_ctrl_c_prints_one_line_and_stops_with_a_snapshot(tmp_path, small_data):
    out = tmp_path / 'run'
    run = launching.Launch(trainer_cmd(out, small_data))
    run.wait_for(lambda: (out / 'log').exists())
    run.signal(signal.SIGINT)                         # hydra passes Ctrl-C to every rank
    code, text = run.finish()
    assert code == 130, text
    assert_one_clean_line(text, 'stop: got SIGINT: every rank stops at the next iteration')
    assert json.loads((out / 'status.json').read_text())['stopped'] == 'SIGINT'
    assert_loadable_snapshots(out)


def probe_cmd(out, data, rank, reads, seconds, *extra):
    """trainer_cmd under tests/stall_probe.py: rank `rank` holds its read `reads`."""
    cmd = trainer_cmd(out, data, *extra)
    k = cmd.index(os.path.join(ROOT, 'train_imagenet.py'))
    cmd[k:k + 1] = [os.path.join(HERE, 'stall_probe.py'), str(rank), str(reads), str(seconds)]
    return cmd


# Rank 1's reads per launch: 8 a step (batch 8), 20 more at each evaluation (every 4 steps).
HELD_IN_STEP_10 = 8 * 9 + 2 * 20 + 1


def test_a_second_sigterm_stops_at_once_even_inside_a_collective(tmp_path, small_data):
    out = tmp_path / 'run'
    # Rank 1 held in a read (a hung filesystem): rank 0 waits in the gradient
    # allreduce, in C, where no Python signal handler runs.
    run = launching.Launch(probe_cmd(out, small_data, 1, HELD_IN_STEP_10, 600))
    run.wait_for('probe: rank 1 holds read')
    run.ranks(str(out))
    run.signal(signal.SIGTERM)
    time.sleep(3)                                     # more than the 2 s of one request
    start = time.monotonic()
    run.signal(signal.SIGTERM)
    code, text = run.finish(timeout=120)
    assert time.monotonic() - start < 60
    assert code == 143, text
    assert text.count('stop: a second SIGTERM: exiting at once; the work since the newest '
                      'snapshot is lost') == 1, text
    assert 'snapshot_iter_4.0' in snapshot_files(out)   # written before: intact
    assert_loadable_snapshots(out)


def _loaders(run, out, rank):
    pids = run.ranks(str(out))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The rank's forkserver, and its children: the pool's loader processes.
        found = [pid for server in launching.descendants(pids[rank])
                 for pid in launching.descendants(server)]
        if found:
            run.ranks(str(out))
            return found
        time.sleep(0.2)
    pytest.fail('no loader process of rank {} found'.format(rank))


def test_a_killed_loader_ends_the_job_naming_rank_process_and_cause(tmp_path, small_data):
    out = tmp_path / 'run'
    run = launching.Launch(trainer_cmd(out, small_data, '--loaderjobs', '2'))
    run.wait_for(lambda: (out / 'log').exists())
    victim = _loaders(run, out, 1)[0]
    os.kill(victim, signal.SIGKILL)                   # what the out-of-memory killer does
    code, text = run.finish(timeout=180)
    assert code == 4, text
    assert ('error: rank 1 on host {}: loader process {} (training data, one of 2) was killed '
            'by SIGKILL'.format(socket.gethostname(), victim)) in text
    assert 'out-of-memory killer' in text and 'Stalled dataset' not in text
    assert_loadable_snapshots(out)


def test_a_stalled_rank_is_reported_with_every_ranks_stack_and_ends_the_job(tmp_path,
                                                                             small_data):
    out = tmp_path / 'run'
    run = launching.Launch(probe_cmd(out, small_data, 1, HELD_IN_STEP_10, 3600,
                                     '--stall-report', '10', '--stall-abort', '25'))
    run.wait_for('probe: rank 1 holds read')
    run.ranks(str(out))
    code, text = run.finish(timeout=240)
    assert code == 4, text
    for rank in (0, 1):
        assert re.search(r'watchdog: rank {} on host \S+ \(pid \d+\): no progress for \d+ s, '
                         r'since iteration 9'.format(rank), text), text
    assert 'most recent call first' in text and 'stall_probe.py' in text   # where rank 1 is
    assert re.search(r'^error: rank 0 on host \S+: no training progress for \d+ s \(since '
                     r'iteration 9', text, re.M), text
    status = json.loads((out / 'status.json').read_text())
    assert status['failed'] == 'stalled' and status['iteration'] == 9
    assert_loadable_snapshots(out)


def test_a_stall_that_recovers_is_logged_with_the_late_rank(tmp_path, small_data, reference):
    out = tmp_path / 'run'
    code, text = launch(probe_cmd(out, small_data, 1, HELD_IN_STEP_10, 20,
                                  '--stall-report', '50'), timeout=300)
    assert code == 0, text
    m = re.search(r'^stall: iteration 10 took ([\d.]+) s \(the median step of this launch: '
                  r'[\d.]+ s\); rank 1 was late by ([\d.]+) s', text, re.M)
    assert m and float(m.group(2)) >= 15, text
    entry = [e for e in json.loads((out / 'log').read_text()) if 'stall/rank' in e]
    assert entry and entry[0]['stall/rank'] == 1
    assert_same_model(out, reference)                 # a stall changes nothing else


def test_a_validation_list_that_repeats_images_is_refused_once(tmp_path, small_data):
    with open(small_data['val']) as f:
        lines = f.readlines()
    with open(small_data['val'], 'a') as f:
        f.writelines(lines[:3])
    code, text = launch(trainer_cmd(tmp_path / 'run', small_data), timeout=180)
    assert code == 2, text
    assert_one_clean_line(text, 'error: {} lists 3 image(s) more than once (3 extra line(s); '
                          'first: '.format(small_data['val']))
    assert 'on lines 1 and 41' in text and 'Keep one line per image' in text


def test_an_out_that_is_a_file_is_said_once_by_rank_0(tmp_path, small_data):
    out = tmp_path / 'file'
    out.write_text('not a folder')
    code, text = launch(trainer_cmd(out, small_data), timeout=180)
    assert code == 2, text
    assert_one_clean_line(text, 'error: --out {} is a file, not a folder.'.format(out))


def test_odd_but_valid_images_and_list_quirks_train_to_the_end(tmp_path, small_data):
    """What a real ImageNet copy holds (CMYK JPEGs, a PNG named .JPEG, huge photos) and
    what lists go through (Windows line ends, blank lines, a repeated line): the run
    trains to its end, warning about the repeat."""
    from PIL import Image
    with open(small_data['train']) as f:
        lines = [line for line in f if line.strip()]
    paths = [os.path.join(small_data['root'], line.split()[0]) for line in lines[:4]]
    rng = numpy.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (30, 30, 3), dtype=numpy.uint8)).convert(
        'CMYK').save(paths[0], format='JPEG')
    Image.fromarray(rng.randint(0, 255, (30, 30, 4), dtype=numpy.uint8), 'RGBA').save(
        paths[1], format='PNG')                       # a PNG named .jpg
    Image.new('RGB', (1, 1), (200, 10, 10)).save(paths[2], format='JPEG')
    Image.new('L', (10000, 10000), 128).save(paths[3], format='JPEG')   # 100 megapixels
    text = '\r\n\r\n'.join(line.rstrip('\n') for line in lines + lines[:2]) + '\r\n'
    with open(small_data['train'], 'w', newline='') as f:
        f.write(text)
    out = tmp_path / 'run'
    code, text = launch(trainer_cmd(out, small_data))
    assert code == 0, text
    assert 'WARNING: {} lists 2 image(s) more than once (2 extra line(s); first: '.format(
        small_data['train']) in text
    assert 'an epoch has 66 images instead of 64' in text
    assert json.loads((out / 'status.json').read_text())['complete'] is True
