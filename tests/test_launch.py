"""The real multi-process path: mpiexec -n 2 from this test process.

Each launch runs inside a timeout. These tests start MPICH's mpiexec from
the virtualenv (make installs it); they are skipped when no mpiexec exists.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import launching  # noqa: E402  (tests/launching.py)
from chainer_resnet import recipes  # noqa: E402
from run_mpi import mpiexec  # noqa: E402

MPIEXEC = mpiexec()
# A PrintReport row: epoch and iteration first (after a terminal escape).
PRINTED_ROW = re.compile(r'^(?:\x1b\[J)?(\d+)\s+(\d+)\s', re.M)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MPIEXEC is None, reason='no mpiexec found')]


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data'))


def trainer_cmd(out, data_cache, *extra, n=2):
    return [MPIEXEC, '-n', str(n), sys.executable,
            os.path.join(ROOT, 'train_imagenet.py'), '--recipe', 'smoke',
            '--out', str(out), '--data-cache', data_cache, '--loaderjobs', '0',
            '--no-progress'] + list(extra)


def run(cmd, timeout=300):
    """Run `cmd` in its own process group (tests/launching.py); (exit status, output)."""
    return launching.launch(cmd, timeout)


def test_exception_on_one_rank_ends_all_ranks():
    start = time.time()
    code, out = run([MPIEXEC, '-n', '2', sys.executable,
                     os.path.join(HERE, 'mpi_abort_probe.py'), 'hook'], timeout=60)
    assert code != 0
    assert time.time() - start < 60
    assert 'injected failure on rank 1' in out
    assert 'passed the barrier' not in out


def test_negative_control_without_the_hook_the_job_hangs():
    proc = subprocess.Popen([MPIEXEC, '-n', '2', sys.executable,
                             os.path.join(HERE, 'mpi_abort_probe.py'), 'nohook'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=8)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_rank_smoke_run_finishes_with_validation(tmp_path, data_cache):
    out = tmp_path / 'run'
    # With a loader process per rank: the forkserver + MultiprocessIterator
    # path that real runs take (the other launch tests load in-process).
    code, text = run(trainer_cmd(out, data_cache, '--loaderjobs', '1'))
    assert code == 0, text
    assert 'workers=2' in text and 'global_batch=16' in text
    # Rank 0 alone reports: the summary line appears once.
    assert text.count('chainer_resnet: recipe=smoke') == 1
    log = json.loads((out / 'log').read_text())
    final = [e for e in log if 'validation/main/accuracy' in e][-1]
    assert final['validation/main/images'] == 40
    assert json.loads((out / 'status.json').read_text())['complete'] is True


def test_killed_run_resumes_and_equals_an_uninterrupted_run(tmp_path, data_cache):
    extra = ['--set', 'epochs=4']               # 16 iterations, snapshot every 4
    reference = tmp_path / 'reference'
    code, text = run(trainer_cmd(reference, data_cache, *extra))
    assert code == 0, text

    out = tmp_path / 'killed'
    proc = subprocess.Popen(trainer_cmd(out, data_cache, *extra), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not glob.glob(str(out / 'snapshot_iter_*.0')):
            assert proc.poll() is None, 'run ended before its first snapshot'
            assert time.time() < deadline, 'no snapshot within 240 s'
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # a crash: no clean shutdown
        proc.wait()
    assert not (out / 'status.json').exists(), 'killed too late to test resume'

    code, text = run(trainer_cmd(out, data_cache, *extra))   # the same command
    assert code == 0, text
    printed = [int(m.group(2)) for m in PRINTED_ROW.finditer(text)]
    assert printed and min(printed) > 4, 'the re-launch started from scratch'
    log = json.loads((out / 'log').read_text())
    iterations = [e['iteration'] for e in log]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 16
    assert json.loads((out / 'status.json').read_text())['complete'] is True
    a = numpy.load(str(reference / 'model.npz'))
    b = numpy.load(str(out / 'model.npz'))
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The TensorBoard events: the killed launch's steps after its snapshot were dropped at
    # the resume, so every logged step is in the files once (chainer_resnet.tensorboard).
    tensorboard = pytest.importorskip('chainer_resnet.tensorboard')
    pytest.importorskip('tensorboardX')
    from tensorboardX.proto.event_pb2 import Event
    steps = [Event.FromString(data).step for path in tensorboard.event_files(str(out))
             for data in tensorboard.read_records(path)
             if any(v.tag == 'main/loss' for v in Event.FromString(data).summary.value)]
    assert sorted(steps) == iterations


def test_world_size_guard_stops_a_mismatched_launch(tmp_path, data_cache):
    code, text = run(trainer_cmd(tmp_path, data_cache, '--set',
                                 'expected_workers=4'))
    assert code != 0
    assert 'written for 4 workers but 2 process(es) were started' in text
    # Every rank raises it together: said once by rank 0, no MPI_Abort that could cut it off.
    assert text.count('written for 4 workers') == 1 and 'MPI_Abort' not in text, text


def _rank_pids(out):
    """PIDs of the trainer processes whose command line names `out`."""
    pids = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/{}/cmdline'.format(name), 'rb') as f:
                    cmdline = f.read().split(b'\0')
            except OSError:
                continue
            if b'train_imagenet.py' in b' '.join(cmdline) and str(out).encode() in cmdline \
                    and not os.path.basename(cmdline[0]).startswith(b'mpiexec'):
                pids.append(int(name))
    return pids


def test_sigusr1_to_one_rank_stops_every_rank_with_a_snapshot(tmp_path, data_cache):
    out = tmp_path / 'run'
    cmd = trainer_cmd(out, data_cache, '--set', 'epochs=4', '--set', 'log_interval_iters=1')
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / 'log').exists():          # training has started on every rank
            assert proc.poll() is None and time.time() < deadline, 'no log within 240 s'
            time.sleep(0.2)
        pids = _rank_pids(out)
        assert len(pids) == 2, pids
        os.kill(pids[1], signal.SIGUSR1)            # the warning reaches one rank only
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, text
    stopped = re.search(r'Stopped by SIGUSR1 at iteration (\d+)/16', text)
    assert stopped, text
    status = json.loads((out / 'status.json').read_text())
    assert status['stopped'] == 'SIGUSR1' and status['complete'] is False
    assert (out / 'snapshot_iter_{}.0'.format(stopped.group(1))).exists()
    code, text = run(trainer_cmd(out, data_cache, '--set', 'epochs=4',
                                 '--set', 'log_interval_iters=1'))
    assert code == 0, text
    assert json.loads((out / 'status.json').read_text())['complete'] is True


def test_a_warning_before_or_after_the_training_loop_does_not_kill_a_rank(tmp_path, data_cache):
    # The scheduler's warning can come during start-up or the final save:
    # main() holds the handler from its first line until it returns.
    def probe(entry):
        cmd = trainer_cmd(tmp_path / entry, data_cache)
        k = cmd.index(os.path.join(ROOT, 'train_imagenet.py'))
        cmd[k:k + 1] = [os.path.join(HERE, 'signal_window_probe.py'), entry]
        return run(cmd)
    code, text = probe('main')
    assert code == 0, text
    assert re.search(r'^Stopped by SIGUSR1 at iteration 1/\d+ \(re-launch to continue\)\.$',
                     text, re.M), text
    assert json.loads((tmp_path / 'main' / 'status.json').read_text())['stopped'] == 'SIGUSR1'
    # Negative control: without main()'s handler, the early warning kills the ranks.
    code, text = probe('run')
    assert code != 0 and 'Stopped by SIGUSR1' not in text, text


WIRING_PROBE = '''
import sys
sys.path.insert(0, sys.argv[1])
import numpy
import train_imagenet
from chainer_resnet import recipes
from chainer_resnet.data import sampling, transforms
trainer = train_imagenet.run(sys.argv[2:])
train = trainer.updater.get_iterator('main').dataset
assert train[0][0].dtype == numpy.uint8, train[0][0].dtype      # loaders send uint8
recipe = recipes.resolve('smoke', [])
float_tf = transforms.from_recipe(recipe)[0]                     # the float32 path
reference = sampling.AugmentedDataset(train.base.base, float_tf, recipe.seed, train.indices)
for i in (0, 5, len(train) + 3):                                 # epoch 0 and epoch 1 draws
    x, t = trainer.updater.converter([train[i]], trainer.updater.device)
    numpy.testing.assert_array_equal(x[0], reference[i][0])
    assert x.dtype == numpy.float32 and t[0] == reference[i][1]
print('wiring ok')
'''


def test_the_trainer_sends_uint8_and_trains_on_the_float32_transform_pixels(tmp_path,
                                                                            data_cache):
    code, text = run([sys.executable, '-c', WIRING_PROBE, ROOT, '--recipe', 'smoke',
                      '--out', str(tmp_path / 'run'), '--data-cache', data_cache,
                      '--loaderjobs', '0', '--no-progress', '--stop-after-iters', '1'])
    assert code == 0 and 'wiring ok' in text, text


# --- every user error: one `error:` line per job, no abort banner ----------------------
ABORT_LINES = re.compile(r'MPI_Abort|Abort\(|BAD TERMINATION|KILLED BY SIGNAL|Traceback',
                         re.I)


def _user_error_cases(tmp_path):
    """(name, extra trainer arguments, a text the one error line must hold)."""
    a_file = tmp_path / 'a-file'
    a_file.write_text('not a folder')
    changed = tmp_path / 'changed'
    changed.mkdir()
    recipe = json.loads(recipes.resolve('smoke', []).to_json())
    recipe['lr_per_256'] = 0.3
    (changed / 'recipe.json').write_text(json.dumps(recipe))
    return [
        ('recipe value', ['--set', 'epochs=inf'], 'from --set epochs=inf'),
        ('unknown field', ['--set', 'epoch=3'], "unknown recipe field 'epoch'"),
        ('argument', ['--stop-after-iters', '0'], 'argument --stop-after-iters'),
        ('gpu without cupy', ['--device', 'gpu'], 'needs CuPy'),
        ('out is a file', ['--out', str(a_file)], 'is a file, not a folder'),
        ('changed --set', ['--out', str(changed)], 'lr_per_256: 0.3 -> 0.2'),
        ('missing --resume', ['--resume', str(tmp_path / 'nope')], 'cannot resume from'),
        ('train without val', ['--train', str(a_file)], '--train given without --val'),
    ]


def test_every_user_error_is_said_once_by_rank_0_without_an_abort(tmp_path, data_cache):
    for name, extra, text in _user_error_cases(tmp_path):
        cmd = trainer_cmd(tmp_path / 'run', data_cache, *extra)
        code, output = run(cmd)
        # argparse's own form is 'train_imagenet.py: error: ...'.
        errors = [line for line in output.splitlines()
                  if line.startswith(('error: ', 'train_imagenet.py: error: '))]
        assert code == 2, (name, output)
        assert len(errors) == 1 and text in errors[0], (name, output)
        assert not ABORT_LINES.search(output), (name, output)
        assert 'trying the previous one' not in output, (name, output)
        if name == 'argument':
            assert output.count('usage: ') == 1, output     # the usage line, once
