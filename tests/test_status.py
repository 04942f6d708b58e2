"""status.json: the atomic writer, the reader, and the command the job scripts run."""

import json
import os
import stat
import subprocess
import sys

import pytest

from chainer_resnet import status

# What rank 0 of train_imagenet.py writes at the end of a launch.
STOPPED = {'iteration': 2, 'total_iters': 4, 'complete': False, 'log': 'out/log',
           'model': 'out/model.npz', 'plots': ['out/loss.png']}
DONE = dict(STOPPED, iteration=4, complete=True, val_top1=0.5, val_top5=0.875)


def test_path():
    assert status.path('results/x') == os.path.join('results/x', 'status.json')


def test_round_trip(tmp_path):
    assert status.write(str(tmp_path), DONE) == status.path(str(tmp_path))
    assert status.read(str(tmp_path)) == DONE
    # Plain JSON that anyone can read, as before.
    assert json.loads((tmp_path / 'status.json').read_text()) == DONE


def test_write_replaces_and_leaves_no_temporary_file(tmp_path):
    status.write(str(tmp_path), STOPPED)
    status.write(str(tmp_path), DONE)
    assert os.listdir(str(tmp_path)) == ['status.json']
    assert status.read(str(tmp_path))['complete'] is True


def test_write_keeps_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        status.write(str(tmp_path), DONE)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'status.json').stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_status_and_no_temporary_file(tmp_path):
    status.write(str(tmp_path), STOPPED)
    with pytest.raises(TypeError):
        status.write(str(tmp_path), {'iteration': object()})   # not JSON-serialisable
    assert os.listdir(str(tmp_path)) == ['status.json']
    assert status.read(str(tmp_path)) == STOPPED


def test_write_goes_through_a_rename(tmp_path, monkeypatch):
    """The reader never sees a half-written file: the new one is renamed in."""
    status.write(str(tmp_path), STOPPED)
    renamed = []

    def replace(src, dst):
        # At the moment of the rename the target still holds the old status
        # and the source is complete, in the same folder.
        assert json.loads(open(dst).read()) == STOPPED
        assert json.loads(open(src).read()) == DONE
        assert os.path.dirname(src) == str(tmp_path)
        renamed.append((src, dst))
        real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(status.os, 'replace', replace)
    status.write(str(tmp_path), DONE)
    assert renamed and renamed[0][1] == status.path(str(tmp_path))


def test_absent(tmp_path):
    assert status.read(str(tmp_path)) is None
    assert status.progress(str(tmp_path)) == (False, 0, 0)


def test_progress(tmp_path):
    status.write(str(tmp_path), STOPPED)
    assert status.progress(str(tmp_path)) == (False, 2, 4)
    status.write(str(tmp_path), DONE)
    assert status.progress(str(tmp_path)) == (True, 4, 4)


@pytest.mark.parametrize('text, message', [
    ('{"complete": false, "iter', 'is not valid JSON'),
    ('', 'is not valid JSON'),
    (b'\xff\xfe{', 'is not valid JSON'),
    ('[1, 2]', 'holds a JSON list, not an object'),
])
def test_corrupt_file_is_an_error_naming_it(tmp_path, text, message):
    p = tmp_path / 'status.json'
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    with pytest.raises(status.StatusError) as e:
        status.read(str(tmp_path))
    assert str(p) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize('fields, message', [
    ({'iteration': 2, 'total_iters': 4}, 'has no "complete"'),
    ({'complete': 'no', 'iteration': 2, 'total_iters': 4},
     '"complete" is "no", expected true or false'),
    ({'complete': False, 'iteration': 2.5, 'total_iters': 4},
     '"iteration" is 2.5, expected an integer'),
    ({'complete': False, 'iteration': 2, 'total_iters': True},
     '"total_iters" is true, expected an integer'),
])
def test_progress_needs_the_three_fields(tmp_path, fields, message):
    status.write(str(tmp_path), fields)
    with pytest.raises(status.StatusError) as e:
        status.progress(str(tmp_path))
    assert status.path(str(tmp_path)) in str(e.value) and message in str(e.value)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    # A folder in its place: unreadable as a file even for root (chmod is not).
    p = tmp_path / 'status.json'
    p.mkdir()
    with pytest.raises(status.StatusError) as e:
        status.read(str(tmp_path))
    assert 'cannot read {}: Is a directory'.format(p) in str(e.value)


# --- the command the job scripts run ------------------------------------------

@pytest.mark.parametrize('content, printed', [
    (None, '0 0 0'),
    (STOPPED, '0 2 4'),
    (DONE, '1 4 4'),
])
def test_cli_prints_complete_iteration_total(tmp_path, capsys, content, printed):
    if content is not None:
        status.write(str(tmp_path), content)
    assert status.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == printed + '\n' and err == ''


def test_cli_on_a_corrupt_file_says_which_and_what_to_do(tmp_path, capsys):
    (tmp_path / 'status.json').write_text('{"complete": tr')
    assert status.main([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ''
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: {} is not valid JSON'.format(
        tmp_path / 'status.json'))
    assert 'remove it and launch again' in lines[0]
    assert 'newest snapshot in {}'.format(tmp_path) in lines[0]


def test_cli_as_the_job_scripts_run_it(tmp_path):
    """`python -m chainer_resnet.status OUT` from the repository root."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, '-m', 'chainer_resnet.status', str(tmp_path)]
    r = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, '0 0 0\n', '')
    status.write(str(tmp_path), STOPPED)
    r = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, universal_newlines=True)
    assert (r.returncode, r.stdout) == (0, '0 2 4\n')
    (tmp_path / 'status.json').write_text('{')
    r = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert r.returncode == 2 and r.stdout == '' and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith('error: ')
