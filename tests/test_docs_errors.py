"""The README's "When things go wrong" table says what the program prints: each quoted
message here is produced by the code that prints it, with the row's situation made in
a temporary folder, and matched against the README's words.

A quote is read as a pattern: ``...`` and ``<placeholder>`` stand for anything, a
number for any number, ``node7`` for any host name; everything else must be printed
as written. The rows that need whole training runs (a divergence, a full disk, a
world-size change, unreadable images, a killed loader, signals at 2 ranks) are
produced by tests/test_faults.py and tests/test_launch.py, which assert their
messages' key phrases.
"""

import io
import os
import re
import signal
import time
import types

import numpy
import pytest

from chainer_resnet import output_folder, recipes, runlock, signals, watchdog
from chainer_resnet.data import layouts, shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOKENS = re.compile(r'(\s*\.\.\.\s*|<[^>]+>|\bnode\d+\b|\d[\d,]*(?:\.\d+)?)')


def table_rows():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    table = text[text.index('| what happened | what it prints'):]
    return [line for line in table.split('\n\n')[0].splitlines() if line.startswith('| ')]


def quotes(row_start, prefix):
    """The row's quoted messages (in backticks) that begin with `prefix`."""
    rows = [r for r in table_rows() if r.startswith('| ' + row_start)]
    assert len(rows) == 1, 'README.md has no error-table row starting {!r}'.format(row_start)
    found = [q for q in re.findall(r'`([^`]+)`', rows[0]) if q.startswith(prefix)]
    assert found, 'the row {!r} quotes no message starting {!r}'.format(row_start, prefix)
    return found


def pattern(quote):
    parts = []
    for token in _TOKENS.split(quote):
        if token.strip() == '...' or (token.startswith('<') and token.endswith('>')):
            parts.append('.*?')
        elif re.fullmatch(r'node\d+', token):
            parts.append(r'\S+')
        elif re.fullmatch(r'\d[\d,]*(?:\.\d+)?', token):
            parts.append(r'[\d,]+(?:\.\d+)?')
        else:
            parts.append(re.escape(token))
    return ''.join(parts)


def says(row_start, prefix, printed):
    for quote in quotes(row_start, prefix):
        assert re.search(pattern(quote), printed, re.S), \
            'README.md quotes\n  {}\nbut the program prints\n  {}'.format(quote, printed)


def error_of(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return 'error: {}'.format(info.value)


def write(path, text, mode='w'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def jpeg(path):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', (4, 4)).save(path, format='JPEG')


def test_the_pattern_reads_a_quote_as_the_docstring_says():
    p = pattern('error: <out> took 3.5 s on host node7 ... (first: a)')
    assert re.search(p, 'error: /tmp/x took 12.25 s on host vm, and more (first: a)')
    assert not re.search(p, 'error: /tmp/x took 12.25 s on host vm (first: b)')


def test_class_folders_that_differ(tmp_path):
    for name in ('cat', 'dog'):
        jpeg(str(tmp_path / 'train' / name / 'a.jpg'))
    for name in ('cat', 'fox'):
        jpeg(str(tmp_path / 'val' / name / 'a.jpg'))
    train = layouts.open_dataset(str(tmp_path / 'train'), None, 2)
    printed = error_of(layouts.open_dataset, str(tmp_path / 'val'), None, 2,
                       classes=train.classes)
    says('train and val class folders differ', 'error: class folders of', printed)
    printed = error_of(layouts.open_dataset, str(tmp_path / 'train'), None, 1000)
    says('train and val class folders differ', '... has 3 class folders', printed)


def test_a_list_file_that_is_not_utf8(tmp_path):
    jpeg(str(tmp_path / 'a.jpg'))
    path = write(str(tmp_path / 'train.txt'), b'a.jpg 0\ncaf\xe9.jpg 1\n', mode='wb')
    printed = error_of(layouts.open_dataset, path, None, 2)
    says('a list file that is not UTF-8', 'error:', printed)


def test_changed_recipe_values(tmp_path):
    out = str(tmp_path / 'run')
    os.makedirs(out)
    demo = recipes.get('demo')
    output_folder.keep_recipe(out, demo, allow_change=False)
    import dataclasses
    changed = dataclasses.replace(demo, lr_per_256=0.3)
    printed = error_of(output_folder.keep_recipe, out, changed, allow_change=False)
    says('re-launch with changed `--set` values', 'error:', printed)


def test_repeated_list_lines(tmp_path):
    names = ['{}.jpg'.format(i) for i in range(4)]
    for name in names:
        jpeg(str(tmp_path / name))
    path = write(str(tmp_path / 'train.txt'), '\n'.join(
        ['{} {}'.format(n, i % 2) for i, n in enumerate(names)] + ['0.jpg 0', '1.jpg 1']) + '\n')
    printed = error_of(layouts.open_dataset, path, None, 2, allow_duplicates=False)
    says('a validation list that names an image twice', 'error:', printed)
    train = layouts.open_dataset(path, None, 2)
    val = layouts.open_dataset(write(str(tmp_path / 'val.txt'), '1.jpg 0\n2.jpg 1\n'), None, 2)
    printed = '\n'.join('WARNING: ' + w for w in shards.index_warnings(train, val))
    says('a training list that names an image twice', 'WARNING:', printed)


def test_a_second_job_on_the_same_out(tmp_path):
    out = str(tmp_path / 'run')
    os.makedirs(out)
    now = time.time()
    holder = {'host': 'node7', 'pid': 4242, 'job': {'scheduler': 'Slurm', 'id': '1234'},
              'started': '2026-12-02 14:03:11 UTC', 'heartbeat': now - 3}
    lock = runlock.RunLock(out, clock=lambda: now)
    printed = error_of(lock._refuse_or_override, holder, 'is running')
    says('a second job on the same `--out`', 'error:', printed)


def test_the_stop_request_lines():
    said = []
    flag = signals.SignalFlag(signal.SIGTERM, log=said.append)
    try:
        flag._record(signal.SIGTERM, from_watcher=True)
    finally:
        flag.restore()
    says('the scheduler\'s SIGTERM', 'stop: got SIGTERM', '\n'.join(said))


def test_a_stalled_rank(monkeypatch):
    stream = io.StringIO()
    dog = watchdog.Watchdog(1, report_after=300, abort_after=900, file=stream,
                            abort=lambda code: None)
    dog.iteration = 812
    dog.report(300.0)
    says('a rank that makes no progress', 'watchdog:', stream.getvalue())
    monkeypatch.setattr(watchdog, '_ABORT_DELAY', 0)
    rank0 = watchdog.Watchdog(0, report_after=300, abort_after=900, file=stream,
                              abort=lambda code: None)
    rank0.iteration = 812
    rank0._end(900.0)
    says('a rank that makes no progress', 'error:', stream.getvalue())


class _Allreduce:
    """One rank's communicator: MAX over one rank is the rank's own values."""

    def __init__(self, rank):
        self.rank = rank
        self.mpi_comm = self

    def Allreduce(self, send, recv, op=None):
        recv[...] = send


def test_a_stall_that_recovers():
    said = []
    comm = _Allreduce(0)
    monitor = watchdog.StallMonitor(comm, watchdog.Watchdog(0, None, None), log=said.append)
    updater = types.SimpleNamespace(iteration=0, own_seconds=0.2, step_seconds=0.26)
    trainer = types.SimpleNamespace(updater=updater)
    for it in range(1, 6):
        updater.iteration = it
        monitor(trainer)
    # The late rank's own work: 121.4 s; its fastest peer's 0.3 s (one rank here:
    # the same rank is both, so the table's "was late by" needs two values).
    monitor.comm = types.SimpleNamespace(rank=0, mpi_comm=types.SimpleNamespace(
        Allreduce=lambda send, recv, op=None: recv.__setitem__(
            Ellipsis, numpy.array([(121400 << watchdog._RANK_BITS) | 5, -300]))))
    updater.iteration, updater.own_seconds, updater.step_seconds = 812, 121.4, 121.4
    monitor(trainer)
    says('a stall that recovers', 'stall:', '\n'.join(said))
