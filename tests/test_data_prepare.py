"""python -m chainer_resnet.data.prepare on a miniature of ImageNet's archives.

The miniature (tests/miniature_imagenet.py) is in the official formats, with
a devkit whose meta.mat is written as MATLAB writes it; the tests know which class every image
belongs to, and that truth, not the devkit, is the oracle for the labels the
command writes.
"""

import dataclasses
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy
import pytest
from PIL import Image

from chainer_resnet import recipes
from chainer_resnet.data import (archives, devkit, inventory, layouts, prepare, preparation,
                                 transforms, workspace)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from miniature_imagenet import (CLASSES, INNER, LEAVES, TRAIN_COUNTS,  # noqa: E402
                                build_miniature, meta_mat_bytes, meta_records, tar_bytes,
                                write_devkit, write_meta)

# The command forks its workers (prepare._run); in a test process, threads
# that other tests left behind make Python >= 3.12 warn at each fork.
pytestmark = pytest.mark.filterwarnings(
    'ignore:This process .* is multi-threaded, use of fork:DeprecationWarning')


@pytest.fixture(scope='module')
def mini(tmp_path_factory):
    return build_miniature(str(tmp_path_factory.mktemp('archives')))


@pytest.fixture(scope='module')
def prepared(mini, tmp_path_factory):
    """The miniature prepared once, uninterrupted, copying the files."""
    out = str(tmp_path_factory.mktemp('prepared') / 'imagenet')
    assert run(mini, out, '--jobs', '2') == 0
    return out


def argv(mini, out, *extra, devkit=True):
    args = ['--train-tar', mini.train_tar, '--val-tar', mini.val_tar, '--out', out,
            '--progress-seconds', '0']
    if devkit:
        args += ['--devkit', mini.devkit]
    return args + ['--subset'] + list(extra)


def run(mini, out, *extra, **options):
    return prepare.main(argv(mini, out, *extra, **options))


def tree(out):
    """{relative path: bytes} of everything the command leaves, but its state."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != workspace.STATE]
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, out)] = f.read()
    return found


def list_entries(out, split):
    with open(os.path.join(out, split + '.txt')) as f:
        return [line.split() for line in f.read().splitlines()]


# --- the result ------------------------------------------------------------------------

def test_archives_become_both_layouts_with_the_true_labels(mini, prepared):
    files = tree(prepared)
    # Every image, byte for byte (odd ones too: CMYK, grayscale, a PNG named
    # .JPEG), in the folder of its class; nothing else but lists and record.
    for (split, wnid, name), data in mini.files.items():
        assert files.pop('{}/{}/{}'.format(split, wnid, name)) == data
    assert sorted(files) == ['classes.txt', 'prepared.json', 'train.txt', 'val.txt']
    # Labels: the test's own truth, in sorted-wnid order, in both list files.
    for split in ('train', 'val'):
        entries = list_entries(prepared, split)
        assert len(entries) == sum(1 for key in mini.files if key[0] == split)
        for path, label in entries:
            top, wnid, name = path.split('/')
            truth = mini.val_truth[name] if split == 'val' else name.split('_')[0]
            assert (top, wnid, int(label)) == (split, truth, CLASSES.index(truth))
    assert files['classes.txt'].decode().splitlines() == [
        '{} words of {}'.format(w, w) for w in CLASSES]
    # The trainer's own checks accept both layouts, and they agree.
    train = layouts.open_dataset(os.path.join(prepared, 'train'), None, 4)
    val = layouts.open_dataset(os.path.join(prepared, 'val'), None, 4, classes=train.classes)
    assert list(train.classes) == CLASSES
    for folders, split in ((train, 'train'), (val, 'val')):
        listed = layouts.open_dataset(os.path.join(prepared, split + '.txt'), None, 4)
        assert listed.paths == folders.paths
        numpy.testing.assert_array_equal(listed.labels, folders.labels)
    for name in ('n01440764/n01440764_100.JPEG', 'n02119789/n02119789_114.JPEG'):
        image = layouts.read_image(os.path.join(prepared, 'train', name))
        assert image.ndim == 3 and image.shape[2] == 3
    record = preparation.read_record(prepared)
    assert (record['num_classes'], record['train_images'], record['val_images']) == (4, 22, 12)
    assert record['resize'] is None and record['val_labels_from'] == 'devkit'
    assert record['bytes_read'] == sum(archives.index_archive(mini.train_tar)[i].size
                                       for i in range(4)) + sum(
        len(data) for key, data in mini.files.items() if key[0] == 'val')


def test_a_finished_output_is_left_alone_and_other_options_refused(mini, prepared, capsys):
    before = tree(prepared)
    assert run(mini, prepared) == 0
    assert 'is already prepared' in capsys.readouterr().out
    assert tree(prepared) == before
    assert run(mini, prepared, '--resize', 'square') == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'resize: None then, square now' in err
    assert tree(prepared) == before


def test_an_output_folder_it_did_not_write_is_refused(mini, tmp_path, capsys):
    (tmp_path / 'mine.txt').write_text('keep me')
    assert run(mini, str(tmp_path)) == 2
    assert 'is not empty and was not written by this command' in capsys.readouterr().err
    assert os.listdir(str(tmp_path)) == ['mine.txt']


# --- counts ------------------------------------------------------------------------------

def test_other_counts_than_imagenets_need_subset(mini, tmp_path, capsys):
    out = str(tmp_path / 'out')
    args = argv(mini, out)
    args.remove('--subset')
    assert prepare.main(args) == 2
    err = capsys.readouterr().err
    assert '4 classes in {}, but ILSVRC-2012 has 1,000'.format(mini.train_tar) in err
    assert 'pass --subset' in err
    assert not os.path.exists(out)               # refused before anything is written


def test_imagenet_counts_are_checked_per_class_against_the_devkit(mini, tmp_path, monkeypatch,
                                                                   capsys):
    # The miniature's counts stand for ILSVRC-2012's: the checks without --subset.
    for name, value in (('IMAGENET_CLASSES', 4), ('IMAGENET_VAL_IMAGES', 12),
                        ('IMAGENET_VAL_PER_CLASS', 3), ('IMAGENET_TRAIN_IMAGES', 22)):
        monkeypatch.setattr(inventory, name, value)
    out = str(tmp_path / 'full')
    args = argv(mini, out)
    args.remove('--subset')
    assert prepare.main(args) == 0
    assert preparation.read_record(out)['subset'] is False
    # A devkit whose num_train_images says 6 for a class of 5: found when the
    # classes have been counted; they are kept, and --subset finishes.
    ids = {wnid: i for i, wnid in LEAVES.items()}
    kit = str(tmp_path / 'kit.tar.gz')
    write_devkit(kit, [ids[mini.val_truth[n]] for n in sorted(mini.val_truth)], str(tmp_path),
                 counts=dict(TRAIN_COUNTS, n01443537=6))
    odd = mini._replace(devkit=kit)
    out = str(tmp_path / 'odd')
    args = argv(odd, out)
    args.remove('--subset')
    capsys.readouterr()
    assert prepare.main(args) == 2
    err = capsys.readouterr().err
    assert 'Classes whose count differs: n01443537 (5, the devkit says 6)' in err
    assert 'run the same command with --subset' in err
    assert sorted(os.listdir(os.path.join(out, 'train'))) == CLASSES
    assert not os.path.exists(os.path.join(out, preparation.RECORD_NAME))
    assert run(odd, out) == 0
    assert '(8 class folders were written by an earlier run)' in capsys.readouterr().out


# --- labels ------------------------------------------------------------------------------

def write_labels(path, labels):
    with open(path, 'w') as f:
        f.writelines('val/{} {}\n'.format(name, wnid) for name, wnid in sorted(labels.items()))
    return path


def test_a_label_file_labels_as_the_devkit_does(mini, prepared, tmp_path, capsys):
    labels = write_labels(str(tmp_path / 'labels.txt'), mini.val_truth)
    out = str(tmp_path / 'from_list')
    assert run(mini, out, '--val-labels', labels, devkit=False) == 0
    printed = capsys.readouterr().out
    assert 'labels from {}'.format(labels) in printed
    assert 'prepare: 100% 8/8 class folders, 34 images' in printed     # progress lines
    assert 'prepared {} in '.format(out) in printed
    assert '4 classes, 22 training and 12 validation images' in printed
    mine, theirs = tree(out), tree(prepared)
    for name in list(mine):
        if name.startswith(('val', 'train')):
            assert mine.pop(name) == theirs.pop(name), name
    assert preparation.read_record(out)['val_labels_from'] == 'list'
    # Without the devkit, classes.txt has no names.
    assert mine['classes.txt'].decode().split() == CLASSES


def test_a_label_file_that_disagrees_with_the_devkit_is_refused(mini, tmp_path, capsys):
    labels = dict(mini.val_truth)
    moved = sorted(labels)[4]
    was = labels[moved]
    labels[moved] = CLASSES[(CLASSES.index(was) + 1) % 4]
    path = write_labels(str(tmp_path / 'labels.txt'), labels)
    out = str(tmp_path / 'out')
    assert run(mini, out, '--val-labels', path) == 2
    err = capsys.readouterr().err
    assert ('disagrees with the devkit\'s ground truth on 1 of the 12 validation images (first: '
            '{}: the file says {}, the devkit {}'.format(moved, labels[moved], was)) in err
    assert not os.path.exists(out)
    # Alone, it names a class the training archive does not hold: refused too.
    labels[moved] = 'n07777777'
    write_labels(path, labels)
    assert run(mini, out, '--val-labels', path, devkit=False) == 2
    err = capsys.readouterr().err
    assert 'name 1 classes that the training archive' in err and 'n07777777' in err
    assert not os.path.exists(out)


# --- damaged archives ----------------------------------------------------------------------

def _cut(source, folder, size):
    path = os.path.join(folder, 'cut-' + os.path.basename(source))
    with open(source, 'rb') as f, open(path, 'wb') as out:
        out.write(f.read(size))
    return path


@pytest.mark.parametrize('which, where, message', [
    ('train_tar', 'inside', 'is cut short: member n01443537.tar needs bytes up to'),
    ('train_tar', 'between', 'cut short or damaged: after member n01443537.tar comes neither '
                             'another member nor tar\'s end-of-archive block'),
    ('val_tar', 'inside', 'is cut short: member ILSVRC2012_val_00000003.JPEG needs'),
])
def test_a_truncated_archive_is_refused_before_anything_is_written(mini, tmp_path, which,
                                                                   where, message, capsys):
    source = getattr(mini, which)
    member = archives.index_archive(source)[1 if which == 'train_tar' else 2]
    size = (member.offset + member.size // 2 if where == 'inside'
            else member.offset + -(-member.size // 512) * 512)
    cut = mini._replace(**{which: _cut(source, str(tmp_path), size)})
    out = str(tmp_path / 'out')
    assert run(cut, out) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: archive {}'.format(getattr(cut, which)))
    assert message in err and 'Download it again' in err
    assert not os.path.exists(out)


def test_a_damaged_class_archive_stops_the_run_and_keeps_the_complete_classes(mini, tmp_path):
    # The outer archive is whole, but n01443537.tar inside it was cut between
    # two of its images: found when that class is extracted, from the
    # command line (python -m), with one error line.
    inner = {}
    for (split, wnid, name), data in sorted(mini.files.items()):
        if split == 'train':
            inner.setdefault(wnid, []).append((name, data))
    outer = []
    for wnid, members in sorted(inner.items()):
        data = tar_bytes(members)
        if wnid == 'n01443537':
            last = archives._scan(io.BytesIO(data), len(data), 'x')
            cut = [m for m, _ in last][2]
            data = data[:cut.offset + -(-cut.size // 512) * 512]
        outer.append((wnid + '.tar', data))
    train_tar = str(tmp_path / 'train.tar')
    with open(train_tar, 'wb') as f:
        f.write(tar_bytes(outer))
    out = str(tmp_path / 'out')
    r = subprocess.run([sys.executable, '-m', 'chainer_resnet.data.prepare'] + argv(
        mini._replace(train_tar=train_tar), out, '--jobs', '1'), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        'error: class archive n01443537.tar in {} is cut short or damaged: after member '
        'n01443537_114.JPEG comes neither'.format(train_tar)), r.stderr
    # Largest class first, one process: the classes larger than the damaged
    # one were done before it and are kept, complete; nothing else is there.
    sizes = {('train', os.path.splitext(m.name)[0]): m.size
             for m in archives.index_archive(train_tar)}
    for (split, wnid, name), data in mini.files.items():
        if split == 'val':
            sizes[split, wnid] = sizes.get((split, wnid), 0) + len(data)
    order = sorted(sorted(sizes), key=lambda key: (CLASSES.index(key[1]), key[0]))
    order.sort(key=lambda key: -sizes[key])
    before = order[:order.index(('train', 'n01443537'))]
    assert before
    done = workspace.Workspace(out).read_done()
    assert sorted(done) == sorted(before)
    for split, wnid in done:
        names = sorted(os.listdir(os.path.join(out, split, wnid)))
        assert names == sorted(n for s, w, n in mini.files if (s, w) == (split, wnid))
    for split in ('train', 'val'):
        assert sorted(os.listdir(os.path.join(out, split))) == sorted(
            w for s, w in done if s == split)
    assert not os.path.exists(os.path.join(out, 'train.txt'))


# --- a kill, and the same command again -------------------------------------------------------

# Runs the command with the third class it starts stuck after two of its
# images, once the parent has recorded the first two classes; says so in
# MARKER with the worker's pid.
STUCK = textwrap.dedent('''
    import os, sys, time
    from chainer_resnet.data import archives, prepare
    done_log, marker = sys.argv[1:3]
    original, started = archives.extract_class, []

    def recorded():
        try:
            with open(done_log) as f:
                return len(f.readlines())
        except FileNotFoundError:
            return 0

    def extract_class(task, converter, still_wanted=None):
        started.append(task.name)
        if len(started) < 3:
            return original(task, converter, still_wanted)
        calls = []

        def stuck(data, where):
            calls.append(where)
            if len(calls) == 3:
                while recorded() < 2:
                    time.sleep(0.01)
                with open(marker, 'w') as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
            return converter(data, where)
        return original(task, stuck, still_wanted)

    archives.extract_class = extract_class
    sys.exit(prepare.main(sys.argv[3:]))
''')


def _start_stuck(tmp_path, done_file, command_args, **popen):
    """The prepare command under STUCK, in its own session (a worker gets stuck once
    two class folders are recorded in `done_file`)."""
    script = tmp_path / 'stuck.py'
    script.write_text(STUCK)
    return subprocess.Popen(
        [sys.executable, str(script), done_file, str(tmp_path / 'stuck')] + command_args,
        cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True, **popen)


def _stuck_worker(proc, tmp_path):
    """The pid of the worker that got stuck (within 90 s), as STUCK's marker names it."""
    marker = str(tmp_path / 'stuck')
    deadline = time.monotonic() + 90
    while not os.path.exists(marker) and proc.poll() is None:
        assert time.monotonic() < deadline, 'the command did not get stuck'
        time.sleep(0.05)
    time.sleep(0.1)
    with open(marker) as f:
        return int(f.read())


def _alive(pid):
    try:
        with open('/proc/{}/stat'.format(pid)) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_killed_midway_it_continues_and_ends_as_an_uninterrupted_run(mini, prepared, tmp_path,
                                                                   capsys):
    out = str(tmp_path / 'out')
    state = os.path.join(out, workspace.STATE)
    proc = _start_stuck(tmp_path, os.path.join(state, 'done.jsonl'),
                        argv(mini, out, '--jobs', '1'))
    try:
        worker = _stuck_worker(proc, tmp_path)
        # kill -9 of the command alone, as an out-of-memory killer would: its
        # worker dies with it (it would otherwise hold the lock and write on).
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while _alive(worker):
            assert time.monotonic() < deadline, 'the worker outlived the command'
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)     # whatever is left of its session
        except ProcessLookupError:
            pass
        proc.wait(30)
    done = workspace.Workspace(out).read_done()
    assert len(done) == 2
    # Complete class folders, each as in the uninterrupted run; the third
    # class only in the staging area, half written.
    expected = tree(prepared)
    written = {split: sorted(os.listdir(os.path.join(out, split))) for split in ('train', 'val')}
    assert sorted((s, w) for s in written for w in written[s]) == sorted(done)
    for split, wnid in done:
        for name in os.listdir(os.path.join(out, split, wnid)):
            with open(os.path.join(out, split, wnid, name), 'rb') as f:
                assert f.read() == expected['{}/{}/{}'.format(split, wnid, name)]
    staged = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(state, 'staging'))
              for f in fs]
    assert len(staged) == 2
    assert not os.path.exists(os.path.join(out, 'train.txt'))
    # The same command again continues, and ends where an uninterrupted run ends.
    capsys.readouterr()
    assert run(mini, out, '--jobs', '2') == 0
    printed = capsys.readouterr().out
    assert '6 class folders to write (2 done before)' in printed and 'waiting' not in printed
    assert tree(out) == expected
    assert not os.listdir(os.path.join(state, 'staging', 'train')) + os.listdir(
        os.path.join(state, 'staging', 'val'))


# --- pre-resizing, and the recipe's check of it --------------------------------------------------

@pytest.mark.parametrize('mode, size', [('shorter', 32), ('square', 24)])
def test_pre_resized_images_are_what_the_transforms_would_resize_to(mini, tmp_path, mode, size):
    out = str(tmp_path / mode)
    assert run(mini, out, '--resize', mode, '--size', str(size), '--jobs', '2') == 0
    record = preparation.read_record(out)
    assert (record['resize'], record['size'], record['train_images']) == (mode, size, 22)
    for (split, wnid, name), data in mini.files.items():
        with Image.open(io.BytesIO(data)) as source:
            source = source.convert('RGB')
        width, height = source.size
        if mode == 'square':
            target = (size, size)
        else:
            target = tuple(reversed(transforms.shorter_side_size(height, width, size)))
            assert min(target) == size
        # The oracle: PIL's bilinear resize of the source, as the transforms do.
        expected = numpy.asarray(source.resize(target, Image.BILINEAR), dtype=float)
        with Image.open(os.path.join(out, split, wnid, name)) as written:
            assert written.format == 'JPEG' and written.size == target, name
            got = numpy.asarray(written.convert('RGB'), dtype=float)
        assert numpy.abs(got - expected).mean() < 3, name     # JPEG's loss only
    if mode == 'square':
        pre_resized = dataclasses.replace(recipes.SMOKE, num_classes=4,
                                          augmentation='pre_resized', pre_resize_size=size)
        assert preparation.check_recipe(pre_resized, os.path.join(out, 'train.txt')) == record


def _record(folder, **values):
    record = dict(num_classes=1000, resize=None, size=None, train_list='train.txt',
                  train_dir='train')
    record.update(values)
    preparation.write_record(str(folder), record)
    return preparation.read_record(str(folder))


def test_a_recipe_is_checked_against_how_the_images_were_resized(tmp_path):
    akiba, check = recipes.AKIBA2017, preparation.check_recipe
    train_list, train_dir = str(tmp_path / 'train.txt'), str(tmp_path / 'train') + os.sep
    assert check(akiba, train_list) is None                   # no record: nothing to check
    record = _record(tmp_path)
    assert check(akiba, train_list) == record == check(akiba, train_dir)
    assert check(akiba, str(tmp_path / 'mine.txt')) is None   # not the prepared list
    with pytest.raises(layouts.DatasetError, match='--set num_classes=1000'):
        check(dataclasses.replace(akiba, num_classes=10), train_list)
    # Squashed to 256x256: the pre_resized augmentation at 256 only.
    _record(tmp_path, resize='square', size=256)
    with pytest.raises(layouts.DatasetError,
                       match='--set augmentation=pre_resized --set pre_resize_size=256'):
        check(akiba, train_list)
    pre = dataclasses.replace(akiba, augmentation='pre_resized')
    assert check(pre, train_list)['size'] == 256
    with pytest.raises(layouts.DatasetError, match='resizes to 288x288'):
        check(dataclasses.replace(pre, pre_resize_size=288), train_list)
    # Shorter side 256: enough for 224 crops (validation resizes to 256), not more.
    _record(tmp_path, resize='shorter', size=256)
    assert check(akiba, train_list)['resize'] == 'shorter'
    assert check(pre, train_list)['resize'] == 'shorter'
    with pytest.raises(layouts.DatasetError, match='resizes it to 293 .*enlarged'):
        check(dataclasses.replace(akiba, crop_size=256), train_list)
    with pytest.raises(layouts.DatasetError, match='--size 288 or more'):
        check(dataclasses.replace(pre, pre_resize_size=288), train_list)
    (tmp_path / preparation.RECORD_NAME).write_text('{"format": 0}')
    with pytest.raises(layouts.DatasetError, match='not a record of format 1'):
        check(akiba, train_list)


# --- the trainer on the result -----------------------------------------------------------------

@pytest.mark.slow
def test_train_imagenet_trains_on_the_prepared_output(prepared, tmp_path):
    sys.path.insert(0, ROOT)
    import train_imagenet
    train = os.path.join(prepared, 'train.txt')
    recipe = dataclasses.replace(recipes.SMOKE, num_classes=4, epochs=1)
    # The check the trainer makes before opening the datasets.
    assert preparation.check_recipe(recipe, train)['train_images'] == 22
    out = tmp_path / 'run'
    trainer = train_imagenet.run([
        '--recipe', 'smoke', '--train', train, '--val', os.path.join(prepared, 'val'),
        '--out', str(out), '--loaderjobs', '0', '--no-progress',
        '--set', 'num_classes=4', '--set', 'epochs=1'])
    assert trainer.updater.iteration == 3                   # 22 images / batch 8
    log = json.loads((out / 'log').read_text())
    final = [entry for entry in log if 'validation/main/accuracy' in entry][-1]
    assert final['validation/main/images'] == 12
    assert numpy.isfinite(final['validation/main/loss'])


# --- meta.mat ------------------------------------------------------------------------------

@pytest.mark.parametrize('order', ['<', '>'])
@pytest.mark.parametrize('compress', [False, True])
def test_meta_mat_as_matlab_writes_it(tmp_path, order, compress):
    path = str(tmp_path / 'meta.mat')
    write_meta(path, compress=compress, order=order)
    with open(path, 'rb') as f:
        variables = devkit.read_mat(f.read())
    synsets = devkit.synsets_of(variables)
    assert synsets == [devkit.Synset(i, w, 'words of ' + w, 0, TRAIN_COUNTS[w])
                       for i, w in sorted(LEAVES.items())] + [
        devkit.Synset(i, w, words, len(kids), 0) for i, w, words, kids in INNER]
    assert {s.wnid for s in devkit.leaf_classes(synsets).values()} == set(CLASSES)
    inner = variables['synsets'][-1]
    assert inner['children'].dtype == numpy.float64
    assert inner['children'].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert variables['synsets'][0]['children'].shape == (1, 0)
    assert inner['gloss'] == 'an inner synset'


@pytest.mark.parametrize('compress', [False, True])
def test_meta_mat_reads_as_scipy_reads_it(tmp_path, compress):
    # SciPy is not in the tested stack (chainer would import it): where it is
    # installed, it checks both the tests' writer and our reader.
    scipy_io = pytest.importorskip('scipy.io')
    path = str(tmp_path / 'meta.mat')
    write_meta(path, compress=compress)
    with open(path, 'rb') as f:
        ours = devkit.read_mat(f.read())['synsets']
    theirs = scipy_io.loadmat(path)['synsets']
    assert len(ours) == theirs.size == len(LEAVES) + len(INNER)
    for record, row in zip(ours, theirs[:, 0]):
        assert sorted(record) == sorted(theirs.dtype.names)
        for field in theirs.dtype.names:
            if isinstance(record[field], str):
                assert [record[field]] == list(row[field])
            else:
                numpy.testing.assert_array_equal(record[field], row[field])


def test_what_is_not_a_v5_mat_file_is_a_clear_error():
    data = meta_mat_bytes(meta_records(), compress=False)
    for bad, message in ((data[:124] + struct.pack('<H', 0x0200) + data[126:], '-v7.3'),
                         (data[:-40], 'truncated'), (b'PK\x03\x04' + data[4:], 'header')):
        with pytest.raises(layouts.DatasetError, match=message):
            devkit.read_mat(bad)
    with pytest.raises(layouts.DatasetError, match='has no struct array "synsets"'):
        devkit.synsets_of(devkit.read_mat(data.replace(b'synsets', b'symbols')))


# --- progress --------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log():
    now = [0.0]
    task = archives.Task('train', 'n01440764', 'train.tar', [], 'folder')
    bar = prepare.Progress(_Terminal(), tasks=2, total_bytes=400, bar=True, interval=30,
                           clock=lambda: now[0])
    now[0] = 10.0
    bar.add(archives.Result(task, images=100, bytes_read=100, bytes_written=90))
    bar.close()
    assert bar.stream.getvalue() == (
        '\r[#####...............]  25% 1/2 class folders, 100 images, 0.1 kB of 0.4 kB, '
        '10 images/s, ETA 30s  \n')
    # In a log: a line once 30 s have passed since the last one, and at the end.
    now[0] = 0.0
    lines = prepare.Progress(io.StringIO(), tasks=3, total_bytes=3e9, bar=False, interval=30,
                             clock=lambda: now[0])
    for t in (20.0, 35.0, 50.0):
        now[0] = t
        lines.add(archives.Result(task, images=1000, bytes_read=1e9, bytes_written=1e9))
    lines.close()
    assert lines.stream.getvalue().splitlines() == [
        'prepare:  67% 2/3 class folders, 2,000 images, 2.0 GB of 3.0 GB, 57 images/s, '
        'ETA 18s',
        'prepare: 100% 3/3 class folders, 3,000 images, 3.0 GB of 3.0 GB, 60 images/s, ETA 0s']


def test_unrecorded_and_missing_class_folders_are_written_again(mini, prepared, tmp_path,
                                                               capsys):
    out = str(tmp_path / 'out')
    shutil.copytree(prepared, out)
    os.remove(os.path.join(out, preparation.RECORD_NAME))
    log = os.path.join(out, workspace.STATE, 'done.jsonl')
    with open(log) as f:
        lines = f.readlines()
    # A kill while the last record was written: its line is cut, its folder
    # (renamed, maybe not complete on disk) must be written again; a class
    # folder removed by hand is written again too.
    unrecorded = json.loads(lines[-1])
    with open(log, 'w') as f:
        f.writelines(lines[:-1] + [lines[-1][:20]])
    folder = os.path.join(out, unrecorded['split'], unrecorded['name'])
    os.remove(os.path.join(folder, sorted(os.listdir(folder))[0]))
    removed = json.loads(lines[0])
    shutil.rmtree(os.path.join(out, removed['split'], removed['name']))
    capsys.readouterr()
    assert run(mini, out) == 0
    assert '2 class folders to write (6 done before)' in capsys.readouterr().out
    assert tree(out) == tree(prepared)


def test_sigterm_stops_it_with_a_message_and_its_workers_with_it(mini, tmp_path):
    # What a batch job's time limit sends first.
    out = str(tmp_path / 'out')
    proc = _start_stuck(tmp_path, os.path.join(out, workspace.STATE, 'done.jsonl'),
                        argv(mini, out, '--jobs', '2'),
                        stderr=subprocess.PIPE, universal_newlines=True)
    try:
        worker = _stuck_worker(proc, tmp_path)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.strip().splitlines()[-1] == (
            'prepare: stopped by SIGTERM; the class folders completed so far are kept. Run the '
            'same command again to continue.')
        deadline = time.monotonic() + 10
        while _alive(worker):
            assert time.monotonic() < deadline, 'the worker outlived the command'
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
    assert len(workspace.Workspace(out).read_done()) >= 2
