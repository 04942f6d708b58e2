"""The job scripts under a real Slurm: tests/slurm/cluster.sh's two nodes.

Every test here submits with ``sbatch`` to the one-machine cluster that
``tests/slurm/cluster.sh up`` starts (node1 and node2, 16 CPUs and 8 fake
GPUs each; .ci/run starts it before ``make test``) and trains the smoke
recipe on CPU ranks. Without a cluster the tests are skipped with one line
that says how to start one; under ``CI=true`` that is a failure.

What runs, and why this set (each launch path once across nodes, once with
two ranks on one node, and the failure each path is known for):

- ``mpirun.sh`` with MPICH's hydra (the virtualenv's): 2 nodes x 1 rank, the
  whole run; its parameters are the reference of the chains below;
- ``mpirun.sh`` with Open MPI's mpirun (Debian's, mpi4py on it through
  ``MPI4PY_LIBMPI``): 1 node x 2 ranks, stopped by the real ``--signal``
  wall-time warning, the chain continues, ``scancel`` of the next chunk,
  resubmission resumes;
- ``srun_pmix.sh`` with Open MPI over PMIx: 2 nodes x 1 rank, a two-chunk
  chain (``afterok``) submitted with resources on the command line, which
  the second chunk keeps, ending with the reference's parameters;
- ``srun_pmix.sh`` with PyPI's MPICH: under PMIx the doctor's FAIL line (no
  MPI_Init); the fix it names first is the hydra run above. (Under
  ``--mpi=pmi2`` MPICH also starts, but 1 of 2 trainer launches on 2 nodes
  aborted in MPI_Init with "mpi/pmi2: invalid client request": not a test);
- Open MPI under ``srun --mpi=pmi2``: MPI_Init aborts, the script's FAIL;
- the wall-time warning reaching every rank on 2 nodes under each launcher
  (hydra, Open MPI mpirun, srun), with a stand-in rank
  (tests/slurm/signal_probe.py) in place of the trainer;
- Slurm's own SIGTERM: at the time limit (the chain goes on, ``afterany``) and
  from ``scancel`` (it does not), with hydra, 1 node x 2 ranks.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
CLUSTER = Path(os.environ.get('SLURM_TEST_DIR', '/tmp/chainer_resnet-slurm'))
CONF = CLUSTER / 'slurm.conf'
OPEN_MPI = '/usr/bin/mpirun.openmpi'
FINAL = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY',
         'PREEMPTED', 'BOOT_FAIL', 'DEADLINE')
START = 'tests/slurm/cluster.sh up (as root; .ci/run does, after installing Slurm)'

pytestmark = pytest.mark.slow


def client_env(**extra):
    env = {'PATH': os.pathsep.join([str(VENV / 'bin'), '/usr/bin', '/bin', '/usr/sbin']),
           'HOME': os.environ.get('HOME', '/root'), 'LANG': 'C.UTF-8',
           'SLURM_CONF': str(CONF)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def slurm(*args, check=True, **extra):
    r = subprocess.run(list(args), env=client_env(**extra), cwd=str(ROOT), timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    if check and r.returncode:
        pytest.fail('{} failed ({}): {}'.format(' '.join(args), r.returncode, r.stdout))
    return r.stdout


def cluster_problem():
    """Why no test cluster can be used, or None."""
    if not shutil.which('sbatch'):
        return 'Slurm is not installed (no sbatch on PATH)'
    if not CONF.exists():
        return 'no test cluster at {}'.format(CONF)
    try:
        ping = slurm('scontrol', 'ping', check=False)
        nodes = slurm('sinfo', '-h', '-N', '-o', '%N %T', check=False)
    except subprocess.TimeoutExpired:
        return 'the test cluster at {} does not answer'.format(CONF)
    if 'is UP' not in ping:
        return 'the test cluster at {} does not answer: {}'.format(CONF, ping.strip())
    for node in ('node1', 'node2'):
        if not re.search(r'^{} (idle|mixed|allocated)'.format(node), nodes, re.M):
            return 'node {} of the test cluster is not up: {}'.format(
                node, ' '.join(nodes.split()))
    return None


@pytest.fixture(scope='module')
def cluster():
    problem = cluster_problem()
    if problem:
        message = '{}: start one with {}'.format(problem, START)
        if os.environ.get('CI') == 'true':
            pytest.fail('CI=true and the real-Slurm tests cannot run: ' + message,
                        pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def job_env(tmp, data_cache, **params):
    """What sbatch exports to the job (--export=ALL): the smoke recipe on CPU,
    the virtualenv, nothing of this process's environment."""
    params = dict(dict(
        RECIPE='smoke', DEVICE='cpu', GPUS_PER_NODE=1, OUT=tmp / 'out', TRAIN_LIST='',
        MODULES='', VENV=VENV, NCCL_SOCKET_IFNAME='', NCCL_DEBUG='',
        TRAIN_ARGS='--data-cache {} --loaderjobs 0 --set epochs=1'.format(data_cache),
        # Open MPI's mpirun refuses root without these; ignored by the others.
        OMPI_ALLOW_RUN_AS_ROOT=1, OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1), **params)
    return client_env(**params)


def open_mpi(**params):
    """Parameters for Debian's Open MPI: mpi4py's wheel switched onto it."""
    return dict(params, MPI4PY_LIBMPI='libmpi.so.40')


def submit(script, env, *options):
    """sbatch from the repository root; the job id."""
    r = subprocess.run(['sbatch', '--parsable'] + list(options) + [script], env=env,
                       cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=60)
    assert r.returncode == 0, r.stdout
    return r.stdout.strip().split(';')[0]


def job(job_id):
    """scontrol show job's fields, as a dict."""
    text = slurm('scontrol', '-o', 'show', 'job', job_id)
    fields = {}
    for item in text.split():
        key, eq, value = item.partition('=')
        if eq:
            fields.setdefault(key, value)
    return fields


def wait(job_id, until=FINAL, timeout=300):
    """The job's fields once its state is in `until`."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job(job_id)
        if fields['JobState'] in until:
            return fields
        if time.monotonic() > deadline:
            slurm('scancel', job_id, check=False)
            pytest.fail('job {} still {} after {} s:\n{}'.format(
                job_id, fields['JobState'], timeout, log(fields)[-4000:]))
        time.sleep(1)


def wait_for_text(job_id, text, timeout=120):
    """The job's log once it holds `text` (the job still running)."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job(job_id)
        out = log(fields)
        if text in out:
            return out
        if fields['JobState'] in FINAL or time.monotonic() > deadline:
            pytest.fail('job {} ({}) never printed {!r}:\n{}'.format(
                job_id, fields['JobState'], text, out[-4000:]))
        time.sleep(0.5)


def log(fields):
    path = Path(fields['StdOut'])
    return path.read_text() if path.exists() else ''


def finished(fields, state='COMPLETED'):
    """The log of a job that ended in `state` (exit 0 for COMPLETED)."""
    out = log(fields)
    assert fields['JobState'] == state, 'job {} {} ({}):\n{}'.format(
        fields['JobId'], fields['JobState'], fields['ExitCode'], out[-6000:])
    return out


def status(out):
    return json.loads((Path(out) / 'status.json').read_text())


def parameters(out):
    import numpy
    with numpy.load(str(Path(out) / 'model.npz')) as f:
        return {k: f[k].copy() for k in f.files}


def next_job(out):
    m = re.search(r'^job: submitted job (\d+)', out, re.M)
    assert m, out[-4000:]
    return m.group(1)


def check_doctor(out, hosts):
    """The doctor passed with one row per rank on `hosts` (in rank order)."""
    assert 'doctor: all checks passed' in out, out[-6000:]
    table = out.split('== ranks ==', 1)[1].split('== checks ==', 1)[0]
    rows = [line.split() for line in table.strip().splitlines()[1:]]
    assert [r[1] for r in rows] == hosts, table


# --- the wall-time warning reaches every rank, under each launcher --------------------

@pytest.mark.parametrize('launcher, params', [
    ('mpirun', dict(MPIRUN=VENV / 'bin' / 'mpiexec')),
    ('mpirun', dict(MPIRUN=OPEN_MPI)),
    ('srun', {}),
], ids=['hydra', 'open-mpi', 'srun'])
def test_warning_reaches_every_rank_on_two_nodes(cluster, tmp_path, data_cache,
                                                  launcher, params):
    probe = tmp_path / 'probe'
    probe.mkdir()
    env = job_env(tmp_path, data_cache, PROBE_LAUNCHER=launcher, PROBE_DIR=probe,
                  WARNING_DELAY=0, **params)
    job_id = submit('tests/slurm/probe_job.sh', env, '--nodes=2', '--ntasks-per-node=1',
                    '--time=2', '--output={}/%j.out'.format(tmp_path))
    deadline = time.monotonic() + 60
    while len(list(probe.glob('ready.*'))) < 2:
        assert time.monotonic() < deadline, log(job(job_id))
        time.sleep(0.2)
    # What --signal=B:USR1@T does at the time: SIGUSR1 to the batch shell only.
    slurm('scancel', '--batch', '--signal=USR1', job_id)
    out = finished(wait(job_id, timeout=90))
    assert 'passed on to the training' in out, out
    for rank, host in (('0', 'node1'), ('1', 'node2')):
        assert 'probe: rank {} on {}: got SIGUSR1'.format(rank, host) in out, out


# --- whole runs ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def reference(cluster, tmp_path_factory, data_cache):
    """mpirun.sh, MPICH's hydra, 2 nodes x 1 rank, uninterrupted: (log, parameters)."""
    tmp = tmp_path_factory.mktemp('reference')
    env = job_env(tmp, data_cache, MPIRUN=VENV / 'bin' / 'mpiexec')
    job_id = submit('jobs/slurm/mpirun.sh', env, '--nodes=2', '--ntasks-per-node=1',
                    '--cpus-per-task=1', '--time=10', '--output={}/%x-%j.out'.format(tmp))
    out = finished(wait(job_id))
    s = status(tmp / 'out')
    params = parameters(tmp / 'out')
    shutil.rmtree(str(tmp / 'out'))           # ~620 MB of snapshots and model
    return out, s, params


def test_mpirun_with_hydra_on_two_nodes(reference):
    out, s, _ = reference
    check_doctor(out, ['node1', 'node2'])
    assert 'launcher: hydra' in out and 'workers=2' in out
    assert 'job: training complete: 4/4 iterations' in out
    assert s['complete'] is True and s['iteration'] == 4


def test_srun_pmix_chain_keeps_resources_and_ends_as_one_run(cluster, tmp_path, data_cache,
                                                              reference):
    """Two chunks (afterok); the second has every resource given to the first on
    sbatch's command line, logs by the same pattern, and ends bit for bit with
    the parameters of the uninterrupted run."""
    env = job_env(tmp_path, data_cache, **open_mpi(CHUNK_EPOCHS=0.5))
    slurm('scontrol', 'create', 'reservation', 'ReservationName=chunks', 'Users=root',
          'Nodes=node1,node2', 'StartTime=now', 'Duration=30')
    try:
        first = submit(
            'jobs/slurm/srun_pmix.sh', env, '--nodes=2', '--ntasks-per-node=1',
            '--cpus-per-task=1', '--gres=gpu:4', '--time=00:09:00', '--job-name=carry',
            '--mem=1000', '--account=chainer', '--constraint=fakegpu',
            '--reservation=chunks', '--output={}/%x-%j.log'.format(tmp_path),
            '--error={}/%x-%j.err'.format(tmp_path))
        out1 = finished(wait(first))
        second = next_job(out1)
        fields2 = wait(second)
        fields1 = job(first)          # the reservation is shown while it exists
    finally:
        slurm('scontrol', 'delete', 'ReservationName=chunks', check=False)
    out2 = finished(fields2)
    check_doctor(out1, ['node1', 'node2'])
    assert 'job: stopped at iteration 2/4 (end of the wall-time chunk)' in out1
    assert '--dependency=afterok:{}'.format(first) in out1
    for key in ('NumNodes', 'NtasksPerN:B:S:C', 'CPUs/Task', 'TresPerNode', 'TimeLimit',
                'MinMemoryNode', 'Account', 'Features', 'Reservation', 'JobName',
                'Partition'):
        assert fields2[key] == fields1[key], (key, fields1[key], fields2[key])
    assert fields2['TresPerNode'] == 'gres:gpu:4' and fields2['CPUs/Task'] == '1'
    assert fields2['StdOut'] == str(tmp_path / 'carry-{}.log'.format(second))
    assert fields2['StdErr'] == str(tmp_path / 'carry-{}.err'.format(second))
    assert 'chunk 2' in out2 and 'continuing from iteration 2/4' in out2
    assert 'job: training complete: 4/4 iterations' in out2
    assert 'next chunk' not in out2
    final = parameters(tmp_path / 'out')
    expected = reference[2]
    assert sorted(final) == sorted(expected)
    assert all((final[k] == expected[k]).all() for k in expected), [
        k for k in expected if not (final[k] == expected[k]).all()][:5]
    shutil.rmtree(str(tmp_path / 'out'))


def test_wall_time_warning_stops_the_run_the_chain_goes_on_and_a_cancelled_chunk_resumes(
        cluster, tmp_path, data_cache):
    """mpirun.sh with Open MPI, 1 node x 2 ranks, --time=2 and the warning 65 s
    before the limit (SBATCH_SIGNAL, so every chunk has it): Slurm signals the
    batch shell, the script passes it on, the trainer stops with a snapshot and
    the next chunk is submitted and resumes. That chunk is cancelled mid-run
    (scancel); submitted again by hand, the run resumes from the newest
    snapshot."""
    from chainer_resnet import snapshots
    out_dir = tmp_path / 'out'
    # 200 iterations: more than the first chunk can train before the warning.
    env = job_env(tmp_path, data_cache, **open_mpi(
        MPIRUN=OPEN_MPI, GPUS_PER_NODE=2, WARNING_DELAY=20, SBATCH_SIGNAL='B:USR1@65',
        TRAIN_ARGS='--data-cache {} --loaderjobs 0 --set epochs=50'.format(data_cache)))
    options = ['--nodes=1', '--ntasks-per-node=2', '--cpus-per-task=1',
               '--output={}/%x-%j.out'.format(tmp_path)]
    first = submit('jobs/slurm/mpirun.sh', env, '--time=2', *options)
    out1 = finished(wait(first, timeout=240))
    check_doctor(out1, ['node1', 'node1'])
    assert 'launcher: openmpi' in out1
    m = re.search(r'^Stopped by SIGUSR1 at iteration (\d+)/200 \(re-launch to continue\)\.$',
                  out1, re.M)
    assert m, out1[-6000:]
    stopped = int(m.group(1))
    assert 'job: wall-time warning (SIGUSR1) passed on to the training at ' in out1
    assert 'job: stopped at iteration {}/200 by the wall-time warning (SIGUSR1)'.format(
        stopped) in out1
    s = status(out_dir)
    assert (s['complete'], s['stopped'], s['iteration']) == (False, 'SIGUSR1', stopped)
    assert snapshots.list_snapshots(str(out_dir))[0][0] == stopped

    second = next_job(out1)
    assert '--dependency=afterok:{}'.format(first) in out1
    wait_for_text(second, 'job: continuing from iteration {}/200'.format(stopped))
    wait_for_text(second, 'chainer_resnet: recipe=smoke')      # the trainer is running
    slurm('scancel', second)
    out2 = finished(wait(second, timeout=60), state='CANCELLED')
    assert 'next chunk' not in out2
    newest = snapshots.list_snapshots(str(out_dir))[0][0]
    assert newest >= stopped

    env3 = dict(env, CHUNK_EPOCHS='0.25', RESUBMIT='0')
    del env3['SBATCH_SIGNAL']
    third = submit('jobs/slurm/mpirun.sh', env3, '--time=10', *options)
    out3 = finished(wait(third))
    assert 'job: continuing from iteration {}/200'.format(newest) in out3
    assert 'job: stopped at iteration {}/200 (end of the wall-time chunk)'.format(
        newest + 1) in out3
    assert 'RESUBMIT=0' in out3
    shutil.rmtree(str(out_dir))


def test_sigterm_at_the_time_limit_resubmits_and_scancel_does_not(cluster, tmp_path,
                                                                  data_cache):
    """mpirun.sh with hydra, 1 node x 2 ranks, --time=1 and no warning (SIGURG, which a
    shell ignores, in place of SIGUSR1): at the limit Slurm sends SIGTERM to every
    process of the job, the trainer stops with a snapshot (exit 143), the script
    finds JobState=TIMEOUT and submits the next chunk with afterany. That chunk is
    cancelled (SIGTERM again, JobState=CANCELLED): it stops with a snapshot too,
    and submits nothing."""
    from chainer_resnet import snapshots
    out_dir = tmp_path / 'out'
    env = job_env(tmp_path, data_cache, MPIRUN=VENV / 'bin' / 'mpiexec', GPUS_PER_NODE=2,
                  TRAIN_ARGS='--data-cache {} --loaderjobs 0 --set epochs=50'.format(
                      data_cache))
    options = ['--nodes=1', '--ntasks-per-node=2', '--cpus-per-task=1',
               '--output={}/%x-%j.out'.format(tmp_path)]
    first = submit('jobs/slurm/mpirun.sh', env, '--time=1', '--signal=B:URG@1', *options)
    fields1 = wait(first, timeout=300)
    out1 = finished(fields1, state='TIMEOUT')
    m = re.search(r'^Stopped by SIGTERM at iteration (\d+)/200 \(re-launch to continue\)\.$',
                  out1, re.M)
    assert m, out1[-6000:]
    stopped = int(m.group(1))
    assert ("job: the training ended (status 143) after SIGTERM: the job's time limit; the "
            "chain goes on") in out1
    assert 'job: stopped at iteration {}/200 by SIGTERM at the job\'s time limit'.format(
        stopped) in out1
    assert '--dependency=afterany:{}'.format(first) in out1
    s = status(out_dir)
    assert (s['complete'], s['stopped'], s['iteration']) == (False, 'SIGTERM', stopped)
    assert snapshots.list_snapshots(str(out_dir))[0][0] == stopped

    second = next_job(out1)
    wait_for_text(second, 'job: continuing from iteration {}/200'.format(stopped))
    wait_for_text(second, 'chainer_resnet: recipe=smoke')      # the trainer is running
    slurm('scancel', second)
    out2 = finished(wait(second, timeout=90), state='CANCELLED')
    m = re.search(r'^Stopped by SIGTERM at iteration (\d+)/200', out2, re.M)
    assert m, out2[-6000:]
    assert 'cancelled (scancel), so the chain ends here (nothing is submitted)' in out2
    assert 'next chunk' not in out2
    assert status(out_dir)['iteration'] == int(m.group(1))
    shutil.rmtree(str(out_dir))


# --- an MPI that cannot speak the launcher's PMI --------------------------------------

@pytest.mark.parametrize('params, expected', [
    # PyPI's MPICH under srun --mpi=pmix: judged by the doctor before MPI_Init.
    ({}, ['FAIL: srun speaks PMIx (PMIX_RANK is set) but the MPI library mpi4py loads, '
          'MPICH Version: 5.0.2, was built without PMIx',
          "fix: launch with this MPI's own mpiexec (jobs/slurm/mpirun.sh, MPIRUN=mpiexec)"]),
    # Debian's Open MPI under srun --mpi=pmi2: MPI_Init aborts, the script says so.
    (open_mpi(SRUN_FLAGS='--mpi=pmi2'),
     ['FAIL: the doctor ended (exit status', 'before its report: MPI did not start under srun',
      "fix: the MPI library mpi4py runs on cannot speak the PMI that 'srun --mpi=pmi2'",
      'SRUN_FLAGS: Open MPI --mpi=pmix']),
], ids=['mpich-under-pmix', 'open-mpi-under-pmi2'])
def test_an_mpi_that_cannot_speak_the_launchers_pmi_fails_with_a_fix(
        cluster, tmp_path, data_cache, params, expected):
    env = job_env(tmp_path, data_cache, GPUS_PER_NODE=2, **params)
    job_id = submit('jobs/slurm/srun_pmix.sh', env, '--nodes=1', '--ntasks-per-node=2',
                    '--cpus-per-task=1', '--time=10', '--output={}/%j.out'.format(tmp_path))
    out = finished(wait(job_id, timeout=120), state='FAILED')
    for text in expected:
        assert text in out, out[-6000:]
    assert 'preflight failed' in out and 'nothing was trained' in out
    assert not (tmp_path / 'out').exists()

