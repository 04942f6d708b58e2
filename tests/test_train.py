"""train_imagenet.py end to end, in this process, on a slice of the demo data."""

import json
import os
import sys

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_imagenet  # noqa: E402


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data'))


def _args(out, data_cache, *extra):
    return ['--recipe', 'smoke', '--out', str(out), '--data-cache', data_cache,
            '--loaderjobs', '0', '--no-progress'] + list(extra)


@pytest.mark.slow
def test_smoke_run_writes_log_plots_snapshot_and_resumes(tmp_path, data_cache, capsys):
    out = tmp_path / 'run'
    # First launch stops after 5 iterations (a wall-time chunk), with a snapshot.
    trainer = train_imagenet.run(_args(out, data_cache, '--stop-after-iters', '6'))
    assert trainer.updater.iteration == 6
    assert (out / 'snapshot_iter_6.0').exists()
    status = json.loads((out / 'status.json').read_text())
    assert status['complete'] is False and status['iteration'] == 6
    recipe = json.loads((out / 'recipe.json').read_text())
    assert recipe['name'] == 'smoke' and recipe['batch_per_worker'] == 8

    # The same command again resumes from the snapshot and finishes.
    trainer = train_imagenet.run(_args(out, data_cache))
    total = status['total_iters']
    assert total == 16                            # 2 epochs x 64 / 8
    assert trainer.updater.iteration == total
    log = json.loads((out / 'log').read_text())
    iterations = [entry['iteration'] for entry in log]
    # Continued, not restarted, and the entry at the chunk end survived.
    assert iterations == list(range(2, total + 1, 2))
    final = [e for e in log if 'validation/main/accuracy' in e][-1]
    assert 0.0 <= final['validation/main/accuracy'] <= 1.0
    assert final['validation/main/images'] == 40  # val_subset, each image once
    assert 'lr' in log[-1] and 'alpha_sgd' in log[-1]
    for name in ('loss.png', 'accuracy.png', 'lr.png', 'model.npz'):
        assert (out / name).stat().st_size > 0, name
    with open(out / 'loss.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    status = json.loads((out / 'status.json').read_text())
    assert status['complete'] is True
    printed = capsys.readouterr().out
    assert 'global_batch=8' in printed and 'model: ' in printed


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path, data_cache):
    a, b = tmp_path / 'a', tmp_path / 'b'
    extra = ['--set', 'epochs=1']               # 8 iterations
    train_imagenet.run(_args(a, data_cache, *extra))
    train_imagenet.run(_args(b, data_cache, '--stop-after-iters', '3', *extra))
    train_imagenet.run(_args(b, data_cache, *extra))
    wa = numpy.load(str(a / 'model.npz'))
    wb = numpy.load(str(b / 'model.npz'))
    assert sorted(wa.files) == sorted(wb.files)
    for key in wa.files:
        numpy.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


def test_bad_recipe_and_paths_are_clear_errors(tmp_path, data_cache, capsys):
    assert train_imagenet.main(['--recipe', 'nope', '--out', str(tmp_path)]) == 2
    assert 'unknown recipe' in capsys.readouterr().err
    assert train_imagenet.main(['--recipe', 'smoke', '--set', 'epochs=-1',
                                '--out', str(tmp_path)]) == 2
    assert 'epochs must be > 0' in capsys.readouterr().err
    code = train_imagenet.main(_args(tmp_path, data_cache, '--train',
                                     str(tmp_path / 'missing.txt'), '--val',
                                     str(tmp_path / 'missing.txt')))
    assert code == 2
    assert 'missing.txt' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:           # an argument error, as argparse's
        train_imagenet.main(_args(tmp_path, data_cache, '--train', str(tmp_path)))
    assert exit.value.code == 2
    assert '--train given without --val' in capsys.readouterr().err


def test_user_errors_are_one_line_messages_with_exit_status_2(tmp_path, data_cache, capsys):
    # Each of these used to end in a traceback (issue 9).
    cases = [
        (['--device', 'gpu'], 'needs CuPy, but'),
        (['--device', '3'], 'needs CuPy, but'),
        (['--resume', str(tmp_path / 'missing.0')], 'cannot resume from --resume'),
        (['--set', 'epochs=inf'], 'epochs must be a finite number'),
        (['--set', 'seed=-1'], 'seed must be >= 0'),
    ]
    for extra, message in cases:
        assert train_imagenet.main(_args(tmp_path / 'run', data_cache, *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, (extra, err)
    (tmp_path / 'file').write_text('not a folder')
    assert train_imagenet.main(_args(tmp_path / 'file', data_cache)) == 2
    assert 'is a file, not a folder' in capsys.readouterr().err
    for flag in (['--stop-after-iters', '0'], ['--stop-after-epochs', 'inf'],
                 ['--device', 'gpux'], ['--skip-bad-images', '-1'],
                 ['--cudnn-workspace', '-1'], ['--cudnn-autotune', 'yes']):
        with pytest.raises(SystemExit) as e:
            train_imagenet.main(_args(tmp_path / 'run', data_cache, *flag))
        assert e.value.code == 2, flag
        assert 'error: argument' in capsys.readouterr().err


def test_cudnn_options_default_to_the_trainers_and_parse():
    from chainer_resnet import gpu
    args = train_imagenet.parse_args([])
    assert args.cudnn_autotune == 'on' and args.cudnn_workspace == gpu.DEFAULT_WORKSPACE_MIB
    args = train_imagenet.parse_args(['--cudnn-autotune', 'off', '--cudnn-workspace', '8'])
    assert args.cudnn_autotune == 'off' and args.cudnn_workspace == 8
