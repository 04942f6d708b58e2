"""The state of a run between launches: ``<out>/status.json``.

Rank 0 of ``train_imagenet.py`` writes it at the end of every launch (with
``iteration``, ``total_iters`` and ``complete``, plus where the log, plots and
model are). The job scripts read it (``jobs/chunks.sh``) to skip a run that is
already complete and to decide whether to submit the next wall-time chunk::

    $ python -m chainer_resnet.status results/smoke-2ranks
    0 2 4

prints ``COMPLETE ITERATION TOTAL`` (``COMPLETE`` 0 or 1; ``0 0 0`` when the
folder has no status.json yet) and exits with status 2 and one ``error:`` line
when the file cannot be read.
"""

import json
import os
import sys

FILENAME = 'status.json'

# What a job script needs; the trainer writes more.
_PROGRESS_FIELDS = (('complete', bool, 'true or false'),
                    ('iteration', int, 'an integer'),
                    ('total_iters', int, 'an integer'))


class StatusError(ValueError):
    """``status.json`` exists but cannot be read, or is not the trainer's."""


def path(out):
    """The status file of the run in folder `out`."""
    return os.path.join(out, FILENAME)


def write(out, status):
    """Write `status` (a JSON-serialisable dict) to ``<out>/status.json``.

    Atomically: the JSON goes to a temporary file in the same folder, which
    is flushed, fsync'ed and then renamed over the old one, so a reader (the
    job script, the next chunk) sees the old status or the new one, never a
    half-written file, even if the job is killed while writing.
    """
    return write_text_atomic(path(out), json.dumps(status, indent=2) + '\n')


def write_text_atomic(target, text):
    """Write `text` to the file `target` atomically (see :func:`write`); return `target`.

    The temporary file is ``.<name>.<pid>.tmp`` beside `target`, removed if
    the write fails.
    """
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, '.{}.{}.tmp'.format(name, os.getpid()))
    # os.open with mode 0o666 gives the permissions the umask allows, as
    # open() would (tempfile.mkstemp would make the status private: 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return target


def read(out):
    """The status dict of the run in `out`; None when there is none yet.

    Raises :class:`StatusError`, naming the file, when it exists but cannot be
    read or does not hold a JSON object.
    """
    p = path(out)
    try:
        with open(p, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StatusError('cannot read {}: {}'.format(p, e.strerror or e)) from e
    try:
        status = json.loads(data)
    except ValueError as e:   # includes a decoding error
        raise StatusError('{} is not valid JSON ({})'.format(p, e)) from e
    if not isinstance(status, dict):
        raise StatusError('{} holds a JSON {}, not an object'.format(
            p, type(status).__name__))
    return status


def progress(out):
    """``(complete, iteration, total_iters)`` of the run in `out`.

    ``(False, 0, 0)`` when there is no status.json yet; :class:`StatusError`
    when it is unreadable or lacks one of the three fields.
    """
    status = read(out)
    if status is None:
        return False, 0, 0
    values = []
    for name, kind, expected in _PROGRESS_FIELDS:
        if name not in status:
            raise StatusError('{} has no "{}"'.format(path(out), name))
        value = status[name]
        # bool is an int in Python: an iteration of `true` is not one.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StatusError('{}: "{}" is {}, expected {}'.format(
                path(out), name, json.dumps(value), expected))
        values.append(value)
    return tuple(values)


def main(argv=None):
    """``python -m chainer_resnet.status OUT``: print COMPLETE ITERATION TOTAL."""
    import argparse
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.status',
        description='Print "COMPLETE ITERATION TOTAL" of the run in OUT (COMPLETE: 0 '
                    'or 1; "0 0 0" before its first launch ended).')
    p.add_argument('out', metavar='OUT', help='the output folder of the run')
    args = p.parse_args(argv)
    try:
        complete, iteration, total = progress(args.out)
    except StatusError as e:
        print('error: {}. The trainer rewrites it at the end of every launch: '
              'remove it and launch again (training resumes from the newest '
              'snapshot in {}).'.format(e, args.out), file=sys.stderr)
        return 2
    print(int(complete), iteration, total)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
