"""``python -m chainer_resnet.recipes``: the facts the job scripts read before a launch."""

import json
import os
import subprocess
import sys

import pytest

from chainer_resnet import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    code = recipes.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# expected_workers (0: any), global batch = 32 x ranks (8 for smoke),
# eta_base = lr_per_256 x batch / 256 (method.md §2) and the virtual workers
# per rank that fit the pinned workers (0: none) written out by hand.
@pytest.mark.parametrize('name, ranks, line', [
    ('akiba2017', 1024, '1024 32768 12.8 1'),      # the paper
    ('akiba2017', 128, '1024 4096 1.6 8'),         # 16 nodes: scaled, guard lifted
    ('akiba2017', 8, '1024 256 0.1 128'),
    ('akiba2017', 20, '1024 640 0.25 0'),          # 1,024 is no multiple of 20
    ('goyal2017', 256, '256 8192 3.2 1'),
    ('demo', 2, '0 64 0.05 0'),                    # lr_per_256 = 0.2
    ('smoke', 2, '0 16 0.0125 0'),
    ('AKIBA2017', 1024, '1024 32768 12.8 1'),      # names are case-insensitive
])
def test_facts(capsys, name, ranks, line):
    code, out, err = run(capsys, 'facts', name, str(ranks))
    assert (code, out, err) == (0, line + '\n', '')


def test_facts_agree_with_the_recipe(capsys):
    for name, r in recipes.RECIPES.items():
        code, out, _ = run(capsys, 'facts', name, '64')
        expected, batch, lr, fit = out.split()
        assert code == 0
        assert int(expected) == (r.expected_workers or 0)
        assert int(fit) == (r.fitting_virtual_workers(64) or 0)
        assert int(batch) == r.global_batch(64)
        assert float(lr) == pytest.approx(r.base_lr(64))


@pytest.mark.parametrize('argv, message', [
    (('facts', 'akiba2018', '8'), "unknown recipe 'akiba2018'; choose one of: akiba2017"),
    (('facts', 'akiba2017', '0'), 'RANKS must be >= 1, got 0'),
    (('show', 'nope'), "unknown recipe 'nope'"),
])
def test_bad_arguments_exit_2_with_one_error_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ''
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], err


def test_ranks_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as e:   # argparse's usage error
        recipes.main(['facts', 'akiba2017', 'eight'])
    assert e.value.code == 2
    assert "invalid int value: 'eight'" in capsys.readouterr().err


def test_list_and_show(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and out.split() == sorted(recipes.RECIPES)
    code, out, _ = run(capsys, 'show', 'smoke')
    assert code == 0 and json.loads(out) == json.loads(recipes.SMOKE.to_json())


def test_facts_as_the_job_scripts_run_it():
    """`"$PYTHON" -m chainer_resnet.recipes facts NAME RANKS` from the repository root."""
    def facts(*argv):
        return subprocess.run([sys.executable, '-m', 'chainer_resnet.recipes', 'facts']
                              + list(argv), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)
    r = facts('akiba2017', '128')
    assert (r.returncode, r.stdout, r.stderr) == (0, '1024 4096 1.6 8\n', '')
    r = facts('nope', '8')
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.startswith('error: unknown recipe') and len(r.stderr.splitlines()) == 1
