"""The run's output folder (``--out``): writable, and its ``recipe.json`` never silently replaced.

Rank 0 checks the folder while it takes the run lock
(:func:`chainer_resnet.runlock.take`), before anything in it is touched, and
writes ``recipe.json`` before training (:func:`keep_recipe`); every rank
raises the same :class:`~chainer_resnet.snapshots.SnapshotError` when either
fails (``communication.from_rank0``). The files the run writes there: the
README's "What a run writes".
"""

import json
import os
import sys
import tempfile

from chainer_resnet import recipes, snapshots


def check(out):
    """Create the run's output folder if needed and check that files can be written there.

    Raises:
        SnapshotError: ``out`` is a file, cannot be created, or is not writable.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise snapshots.SnapshotError(
            '--out {} is a file, not a folder. Pass a folder for the run\'s results (it is '
            'created if missing).'.format(out))
    try:
        os.makedirs(out, exist_ok=True)
        # A nameless file: a probe can never be taken for a leftover of a write.
        with tempfile.TemporaryFile(dir=out) as f:
            f.write(b'ok')
    except OSError as e:
        raise snapshots.SnapshotError(
            'cannot write to the output folder --out {} ({}). Pass a folder you can write '
            'to.'.format(out, e.strerror or e)) from None


def keep_recipe(out, recipe, allow_change, log=None):
    """Write ``<out>/recipe.json``, never silently over one that describes another run.

    If ``recipe.json`` exists with other values: with ``allow_change`` the old
    file is kept as ``recipe.<iteration>.json`` (the newest snapshot's
    iteration, or 0) and the differences are logged; without it
    :class:`~chainer_resnet.snapshots.SnapshotError` says what differs and what to do.
    """
    path = os.path.join(out, 'recipe.json')
    current = json.loads(recipe.to_json())
    try:
        with open(path, encoding='utf-8') as f:
            saved = json.load(f)
    except FileNotFoundError:
        saved = None
    except (OSError, ValueError):
        saved = {}   # unreadable: treated as different
    saved = recipes.filled(saved) if saved else saved
    if saved is not None and saved != current:
        changes = recipes.differences(saved, current)
        if not allow_change:
            raise snapshots.SnapshotError(
                '{} describes a run with other recipe values than this launch ({}). '
                'Re-launch with the values in recipe.json, pass another --out for a new '
                'run, or pass --allow-recipe-change to continue this run with the new '
                'values.'.format(path, '; '.join(changes)))
        newest = snapshots.list_snapshots(out)
        kept = os.path.join(out, 'recipe.{}.json'.format(newest[0][0] if newest else 0))
        os.replace(path, kept)
        (log or (lambda text: print(text, file=sys.stderr, flush=True)))(
            'recipe: the values changed ({}); the old recipe.json is kept as {}'.format(
                '; '.join(changes), kept))
    if saved != current:
        temp = os.path.join(out, '.tmp-recipe.json-{}'.format(os.getpid()))
        with open(temp, 'w', encoding='utf-8') as f:
            f.write(recipe.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
