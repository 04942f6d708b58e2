"""The large-batch study command: its recipes, and a tiny study that runs and resumes.

The tiny study checks that the outputs are produced and that a stopped
study continues, not what the numbers say (docs/large-batch-study.md has
the real study).
"""

import json
import os
import subprocess
import sys

import pytest

from chainer_resnet import recipes, study

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run_mpi import mpiexec  # noqa: E402


@pytest.mark.parametrize('arm', study.ARMS)
def test_each_arm_is_the_demo_recipe_with_its_changes(arm):
    r = study.arm_recipe(arm, 1024, 2, 6, 16)
    assert (r.virtual_workers_per_rank, r.workers(2), r.global_batch(r.workers(2))) == (
        16, 32, 1024)
    assert (r.epochs, r.crop_size, r.lr_per_256, r.seed) == (6, 16, recipes.DEMO.lr_per_256,
                                                             recipes.DEMO.seed)
    expected = {'paper': ('rmsprop_warmup', 'slow_start', 'last_batch'),
                'goyal': ('momentum_sgd', 'goyal', 'moving_average'),
                'sgd-no-warmup': ('momentum_sgd', 'goyal', 'moving_average'),
                'paper-bn-moving-average': ('rmsprop_warmup', 'slow_start', 'moving_average')}
    assert (r.optimizer, r.lr_schedule, r.batch_norm) == expected[arm]
    assert r.goyal_warmup_epochs == (0 if arm == 'sgd-no-warmup' else 6 * 5 / 90)
    assert r.warmup_center_epochs == pytest.approx(6 * 10 / 90)
    # The --set arguments the study passes rebuild the same recipe from the demo's.
    rebuilt = recipes.override(recipes.DEMO, [a for a in study.set_args(r) if a != '--set'])
    assert rebuilt.to_dict() == dict(r.to_dict(), name='demo')


def test_bad_settings_are_refused_with_a_message(capsys):
    assert study.main(['--batches', '100', '--out', os.devnull + '-x']) == 2
    assert 'not a multiple of 2 ranks x 32 images' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(['--arms', 'adam'])
    assert 'unknown arm(s) adam' in capsys.readouterr().err


TINY = ['--ranks', '1', '--batch-per-worker', '8', '--epochs', '1', '--train-subset', '64',
        '--val-subset', '40', '--crop-size', '16', '--loaderjobs', '0']


@pytest.mark.slow
@pytest.mark.skipif(mpiexec() is None, reason='no mpiexec found')
def test_a_tiny_study_writes_its_outputs_and_continues_where_it_stopped(tmp_path, capsys):
    out = tmp_path / 'study'
    data = str(tmp_path / 'data')
    args = TINY + ['--out', str(out), '--data-cache', data, '--arms', 'paper,goyal']
    assert study.main(args + ['--batches', '16']) == 0
    first = json.loads((out / 'results.json').read_text())
    assert sorted(r['arm'] for r in first) == ['goyal', 'paper']
    # A run left unfinished (as if the study had been killed in it) is continued.
    unfinished = study.arm_recipe('paper', 32, 1, 1, 16, batch_per_worker=8,
                                  train_subset=64, val_subset=40)
    run_dir = out / study.run_name('paper', 32)
    run_dir.mkdir()
    cmd = study.train_command(unfinished, 1, str(run_dir), data, 0) + ['--stop-after-iters', '1']
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    capsys.readouterr()
    assert study.main(args + ['--batches', '16,32']) == 0
    printed = capsys.readouterr().out
    assert 'study: 4 run(s), 2 recorded already, 2 to run' in printed
    assert 'snapshot: continuing from' in (run_dir / 'train.out').read_text()
    results = json.loads((out / 'results.json').read_text())
    assert sorted((r['arm'], r['global_batch']) for r in results) == [
        ('goyal', 16), ('goyal', 32), ('paper', 16), ('paper', 32)]
    assert [r for r in results if r['global_batch'] == 16] == first      # not run again
    r32 = next(r for r in results if (r['arm'], r['global_batch']) == ('paper', 32))
    assert (r32['workers'], r32['virtual_workers_per_rank'], r32['total_iters']) == (4, 4, 2)
    assert 0 <= r32['top1'] <= 1
    table = (out / 'results.md').read_text()
    assert '| paper |' in table and '| goyal |' in table and 'batch 32' in table
    assert (out / 'study.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    left = [name for d in out.iterdir() if d.is_dir() for name in os.listdir(str(d))]
    assert not [n for n in left if n.startswith('snapshot_iter_') or n == 'model.npz']
