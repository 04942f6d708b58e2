"""The output folder of ``prepare`` while it is written, and how a killed run continues.

``OUT/.prepare`` holds the work's state::

    lock          held (flock) by the running command and its worker processes
    options.json  the archives (names, sizes), the validation labels' fingerprint
                  and the resize options the output was started with
    done.jsonl    one line per complete class folder: split, class, images, bytes
    staging/      class folders being written

A class folder is written under ``staging/<split>/<class>``, renamed to
``OUT/<split>/<class>`` when complete, then recorded in ``done.jsonl``, so
it is complete or absent: after a kill, :meth:`Workspace.tidy` removes the
staging area and any class folder renamed but not recorded (the kill came in
between), and the run writes whatever is not recorded. A later run must use
the same archives, labels and options (:meth:`Workspace.check_options`):
class folders made two ways would not be one dataset.
"""

import fcntl
import json
import os
import shutil

from chainer_resnet import status
from chainer_resnet.data.layouts import DatasetError

STATE = '.prepare'
"""The folder inside the output that holds the work's state."""

SPLITS = ('train', 'val')


class Workspace:
    """The output folder ``out`` (absolute) and its state folder."""

    def __init__(self, out):
        self.out = out
        self.state = os.path.join(out, STATE)
        self._log = None

    def check_new_or_ours(self):
        """Refuse an output folder that holds something this command did not write."""
        if not os.path.exists(self.out):
            return
        if not os.path.isdir(self.out):
            raise DatasetError('--out {} is a file. Pass a new or empty folder.'.format(self.out))
        if os.listdir(self.out) and not os.path.isdir(self.state):
            raise DatasetError(
                '--out {} is not empty and was not written by this command (it has no {} '
                'folder). Pass a new or empty folder: an unfinished run\'s leftovers there '
                'would be removed.'.format(self.out, STATE))

    def lock(self, stream):
        """Create the state folder and lock it; returns the file holding the lock.

        The lock is held while the returned file is open, and by the forked
        workers, which share it: a second run waits until they have ended.
        """
        os.makedirs(self.state, exist_ok=True)
        f = open(os.path.join(self.state, 'lock'), 'a')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.write('prepare: another prepare is writing {} (or its processes are '
                         'ending); waiting for it\n'.format(self.out))
            stream.flush()
            fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def check_options(self, options):
        """Record the options of a new output; refuse other ones for an old output."""
        path = os.path.join(self.state, 'options.json')
        if not os.path.exists(path):
            status.write_text_atomic(path, json.dumps(options, indent=1, sort_keys=True) + '\n')
            return
        with open(path) as f:
            before = json.load(f)
        changed = ['{}: {} then, {} now'.format(k, before.get(k), options.get(k))
                   for k in sorted(set(before) | set(options)) if before.get(k) != options.get(k)]
        if changed:
            raise DatasetError(
                '{} was started with other archives, labels or options ({}). Continue with '
                'the same ones, or pass another --out.'.format(self.out, '; '.join(changed)))

    def read_done(self):
        """``{(split, class): entry}`` of the class folders recorded as complete."""
        done = {}
        try:
            with open(os.path.join(self.state, 'done.jsonl')) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return done
        for line in lines:
            try:
                entry = json.loads(line)
                done[entry['split'], entry['name']] = entry
            except (ValueError, KeyError, TypeError):
                continue            # a line cut by a kill: that class is written again
        return done

    def tidy(self, classes, done):
        """Remove what an interrupted run left unfinished, and the records of
        class folders that are gone (``done`` is updated).

        Raises:
            DatasetError: a folder in ``OUT/train`` or ``OUT/val`` that is not
                one of ``classes``.
        """
        shutil.rmtree(os.path.join(self.state, 'staging'), ignore_errors=True)
        wanted = set(classes)
        for split in SPLITS:
            folder = os.path.join(self.out, split)
            os.makedirs(folder, exist_ok=True)
            for name in sorted(os.listdir(folder)):
                if name not in wanted:
                    raise DatasetError('{} is not a class of the archives. Remove it and run '
                                       'the same command again.'.format(
                                           os.path.join(folder, name)))
                if (split, name) not in done:
                    shutil.rmtree(os.path.join(folder, name))
            for key in [key for key in done if key[0] == split]:
                if not os.path.isdir(os.path.join(folder, key[1])):
                    del done[key]

    def staging(self, split, name):
        """Where class ``name`` of ``split`` is written before it is published."""
        return os.path.join(self.state, 'staging', split, name)

    def publish(self, result):
        """Rename a written class folder into place and record it; return the record."""
        task = result.task
        os.rename(task.folder, os.path.join(self.out, task.split, task.name))
        entry = {'split': task.split, 'name': task.name, 'images': result.images,
                 'bytes_read': result.bytes_read, 'bytes_written': result.bytes_written}
        if self._log is None:
            self._log = open(os.path.join(self.state, 'done.jsonl'), 'a')
        self._log.write(json.dumps(entry, sort_keys=True) + '\n')
        self._log.flush()
        os.fsync(self._log.fileno())
        return entry

    def close(self):
        """Close the record of complete class folders."""
        if self._log is not None:
            self._log.close()
            self._log = None
