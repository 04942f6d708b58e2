"""chainer_resnet.snapshots: atomic writes, newest by iteration, checks on resume.

The multi-rank cases (corrupt newest snapshot, world-size change, full disk)
run the real trainer in tests/test_faults.py; these are single-process.
"""

import dataclasses
import json
import os
import subprocess

import numpy
import pytest


from chainer_resnet import output_folder, recipes, snapshots


def test_snapshots_are_ordered_by_iteration_not_modification_time(tmp_path):
    for iteration in (8, 12, 4):
        (tmp_path / 'snapshot_iter_{}.0'.format(iteration)).write_bytes(b'x')
    # The oldest iteration written last: the newest file by mtime.
    os.utime(tmp_path / 'snapshot_iter_4.0', (2e9, 2e9))
    (tmp_path / 'snapshot_iter_x.0').write_bytes(b'not ours')
    (tmp_path / 'tmpsnapshot_iter_16.0abc').mkdir()
    assert [i for i, _ in snapshots.list_snapshots(str(tmp_path))] == [12, 8, 4]
    assert snapshots.list_snapshots(str(tmp_path / 'missing')) == []


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
    (tmp_path / '.tmp-snapshot_iter_4.0-123').write_bytes(b'partial')
    (tmp_path / 'tmpsnapshot_iter_8abc').mkdir()          # Chainer's own writer's folder
    (tmp_path / 'snapshot_iter_4.0').write_bytes(b'keep')
    (tmp_path / 'log').write_text('[]')
    assert snapshots.remove_leftovers(str(tmp_path)) == [
        '.tmp-snapshot_iter_4.0-123', 'tmpsnapshot_iter_8abc']
    assert sorted(os.listdir(tmp_path)) == ['log', 'snapshot_iter_4.0']


def test_atomic_write_replaces_whole_files_and_cleans_up_on_error(tmp_path):
    path = str(tmp_path / 'model.npz')
    snapshots.write_npz_atomic(path, {'a': numpy.arange(3)})
    snapshots.write_npz_atomic(path, {'a': numpy.arange(5)})
    with numpy.load(path) as f:
        assert f['a'].tolist() == [0, 1, 2, 3, 4]
    class Unsavable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError('disk went away')

    with pytest.raises(RuntimeError, match='disk went away'):       # fails mid-write
        snapshots.write_npz_atomic(path, {'b': numpy.ones(1000), 'a': Unsavable()})
    assert os.listdir(tmp_path) == ['model.npz']
    with numpy.load(path) as f:
        assert f['a'].tolist() == [0, 1, 2, 3, 4]


def test_non_finite_entries():
    arrays = {'w': numpy.ones(3), 'b': numpy.array([1.0, numpy.nan]),
              'v': numpy.array([numpy.inf], numpy.float32), 'i': numpy.arange(3)}
    assert snapshots.non_finite_entries(arrays) == ['b', 'v']
    assert snapshots.non_finite_entries({'w': numpy.ones(3)}) == []


def test_recipe_json_is_never_silently_overwritten(tmp_path):
    out = str(tmp_path)
    logged = []
    smoke = recipes.get('smoke')
    output_folder.keep_recipe(out, smoke, allow_change=False)
    output_folder.keep_recipe(out, smoke, allow_change=False)      # the same run: fine
    changed = recipes.resolve('smoke', ['lr_per_256=0.3'])
    with pytest.raises(snapshots.SnapshotError, match=r'lr_per_256: 0\.2 -> 0\.3'):
        output_folder.keep_recipe(out, changed, allow_change=False)
    assert json.loads((tmp_path / 'recipe.json').read_text())['lr_per_256'] == 0.2
    (tmp_path / 'snapshot_iter_6.0').write_bytes(b'x')
    output_folder.keep_recipe(out, changed, allow_change=True, log=logged.append)
    assert json.loads((tmp_path / 'recipe.json').read_text())['lr_per_256'] == 0.3
    assert json.loads((tmp_path / 'recipe.6.json').read_text())['lr_per_256'] == 0.2
    assert 'lr_per_256' in logged[0]


def test_output_folder_checks(tmp_path):
    output_folder.check(str(tmp_path / 'new' / 'run'))
    assert (tmp_path / 'new' / 'run').is_dir() and not os.listdir(tmp_path / 'new' / 'run')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(snapshots.SnapshotError, match='is a file, not a folder'):
        output_folder.check(str(tmp_path / 'file'))
    readonly = tmp_path / 'ro'
    readonly.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs',
                              str(readonly)], capture_output=True).returncode == 0
    if not mounted:
        readonly.chmod(0o500)
        if os.access(str(readonly), os.W_OK):
            pytest.skip('cannot make a read-only folder here (root without mount)')
    try:
        with pytest.raises(snapshots.SnapshotError, match='cannot write to the output folder'):
            output_folder.check(str(readonly))
    finally:
        if mounted:
            subprocess.run(['umount', '-l', str(readonly)], capture_output=True)


class _World1:
    """The communicator surface Snapshot uses, for one process."""

    rank, size = 0, 1

    class mpi_comm:
        @staticmethod
        def bcast(value, root=0):
            return value

        @staticmethod
        def Bcast(buffer, root=0):
            pass




def test_snapshot_round_trip_and_fallback_past_a_damaged_one(tmp_path, tiny_trainer):
    smoke = recipes.get('smoke')
    trainer, model = tiny_trainer()
    trainer.extend(snapshots.Snapshot(_World1(), smoke, keep=2), trigger=(1, 'iteration'))
    trainer.run()
    assert [i for i, _ in snapshots.list_snapshots(str(tmp_path))] == [4, 3]  # keep=2
    with numpy.load(str(tmp_path / 'snapshot_iter_4.0')) as f:
        assert int(f[snapshots.META_WORLD_SIZE]) == 1
        assert json.loads(str(f[snapshots.META_RECIPE]))['name'] == 'smoke'
    final = model.predictor.W.array.copy()
    (tmp_path / 'snapshot_iter_4.0').write_bytes(b'PK\x03\x04 truncated')
    logged = []
    resumed, model2 = tiny_trainer(stop=3)
    ext = snapshots.Snapshot(_World1(), smoke, log=logged.append)
    resumed.extend(ext, trigger=(1, 'iteration'))
    resumed.run()
    assert ext.loaded.endswith('snapshot_iter_3.0') and resumed.updater.iteration == 3
    assert 'cannot load' in logged[0] and 'snapshot_iter_4.0' in logged[0]
    assert not numpy.array_equal(model2.predictor.W.array, final)   # the iteration-3 weights


def test_no_loadable_snapshot_and_a_bad_resume_are_errors(tmp_path, tiny_trainer):
    smoke = recipes.get('smoke')
    (tmp_path / 'snapshot_iter_2.0').write_bytes(b'garbage')
    trainer, _ = tiny_trainer()
    trainer.extend(snapshots.Snapshot(_World1(), smoke, log=lambda text: None))
    with pytest.raises(snapshots.SnapshotError, match='none of the 1 snapshot'):
        trainer.run()
    trainer, _ = tiny_trainer(out=tmp_path / 'other')
    trainer.extend(snapshots.Snapshot(_World1(), smoke, resume=str(tmp_path / 'missing.0'),
                                      log=lambda text: None))
    with pytest.raises(snapshots.SnapshotError, match='cannot resume from --resume'):
        trainer.run()


def test_non_finite_state_is_never_written(tiny_trainer, tmp_path):
    for writer in ('sync', 'thread'):
        trainer, model = tiny_trainer(stop=1, out=tmp_path / writer)
        ext = snapshots.Snapshot(_World1(), recipes.get('smoke'), writer=writer)
        trainer.extend(ext, trigger=(1, 'iteration'))
        model.predictor.b.array[0] = numpy.nan
        with pytest.raises(snapshots.NonFiniteStateError, match='it was not written'):
            trainer.run()
            ext.wait()          # the thread writer reports at the next snapshot or wait()
        assert snapshots.list_snapshots(str(tmp_path / writer)) == []


def test_a_field_added_since_the_run_counts_at_its_default():
    current = json.loads(recipes.DEMO.to_json())
    older = {k: v for k, v in current.items() if k != 'init_model'}   # before the field
    assert recipes.differences(older, current) == []
    changed = dict(current, init_model='/runs/a/model.npz')
    assert recipes.differences(older, changed) == [
        "init_model: None -> '/runs/a/model.npz'"]
    # And recipe.json of such a run is the same recipe (a relaunch continues it).
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        with open(os.path.join(out, 'recipe.json'), 'w') as f:
            json.dump(older, f)
        output_folder.keep_recipe(out, recipes.DEMO, allow_change=False)
        with pytest.raises(snapshots.SnapshotError, match='init_model'):
            output_folder.keep_recipe(out, dataclasses.replace(recipes.DEMO, init_model='x'),
                                  allow_change=False)
