"""The documents tell the truth: what they quote from CPU commands is what the commands print.

README.md, docs/, jobs/README.md and benchmarks/README.md quote outputs of
commands that run on a CPU: the time-to-train model (`plan`), `recipes facts`,
the trainer's summary lines, the doctor, `make demo`'s command. Each quote is
produced here by the command (or the function the command prints with), so a
change that makes a quoted output false fails `make test`. Every repository
path a document cites must exist. Measured numbers (a demo's top-1, a
benchmark's images/s) are records of a run, not quotes: they are not checked.
"""

import os
import platform
import re
import subprocess
import sys

import numpy
import pytest

import chainer

from chainer_resnet import outcome, recipes, schedules
from chainer_resnet.plan import records as plan_records

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
DOCUMENTS = ('README.md', 'docs/method.md', 'docs/time-to-train.md',
             'docs/large-batch-study.md', 'jobs/README.md', 'benchmarks/README.md')
# Top-level folders and files a document may cite; `shared/` is the team's
# notes outside the repository, so citing it is an error a reader would hit.
CITABLE = re.compile(r'^(?:chainer_resnet|docs|jobs|benchmarks|tests|requirements|\.ci|shared)/'
                     r'[\w./-]*[\w/]$|^(?:train_imagenet\.py|Makefile|setup\.py|pytest\.ini|'
                     r'ruff\.toml)$')


def document(name):
    with open(os.path.join(ROOT, name), encoding='utf-8') as f:
        return f.read()


def flat(text):
    """`text` with every run of white space one space (quotes may wrap lines)."""
    return ' '.join(text.split())


def quoted(name, text):
    assert flat(text) in flat(document(name)), '{} no longer says: {}'.format(name, text)


# --- every cited path exists ------------------------------------------------------------

def cited_paths(text):
    """Repository paths in backticks or markdown links, without ::test or :line suffixes."""
    found = set()
    for token in re.findall(r'`([^`\s]+)`', text) + re.findall(r'\]\(([^)\s#]+)', text):
        path, _, test = token.partition('::')
        path = re.sub(r':\d+$', '', path)
        # A file (an extension) or a folder (a trailing slash); other tokens with a
        # slash may be names (an .npz entry such as chainer_resnet/model).
        is_path = path.endswith('/') or re.search(r'\.\w+$', path) or path in (
            'Makefile',)
        if CITABLE.match(path) and is_path and not any(c in path for c in '<>*{}$'):
            found.add((path, test))
    return found


@pytest.mark.parametrize('name', DOCUMENTS)
def test_every_path_a_document_cites_exists(name):
    base = os.path.dirname(name)
    missing = []
    for path, test in sorted(cited_paths(document(name))):
        # Markdown links are relative to the document, backticked paths to the root.
        candidates = [os.path.join(ROOT, path), os.path.join(ROOT, base, path)]
        where = next((c for c in candidates if os.path.exists(c)), None)
        if where is None:
            missing.append(path)
        elif test and 'def {}('.format(test) not in open(where, encoding='utf-8').read():
            missing.append('{}::{}'.format(path, test))
    assert not missing, '{} cites what does not exist: {}'.format(name, ', '.join(missing))


def test_the_path_check_catches_a_missing_path():
    # Negative control: what the issue found (docs citing the team's notes).
    paths = cited_paths('see `shared/method.md` and [x](docs/method.md) and `results/demo/log` '
                        'and the entry `chainer_resnet/model`')
    assert paths == {('shared/method.md', ''), ('docs/method.md', '')}
    assert not os.path.exists(os.path.join(ROOT, 'shared/method.md'))


# --- the time-to-train model ------------------------------------------------------------

def plan(*argv):
    """The plan command's output lines for `argv`."""
    result = subprocess.run([sys.executable, '-m', 'chainer_resnet.plan'] + list(argv),
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def minutes(*argv):
    last = plan(*argv)[-1]
    assert last.startswith('total: ') and last.endswith(' min'), last
    return float(last.split()[1])


def hours(*argv):
    """Hours as the documents round them: '≈ 26 h', '≈ 1.7 h'."""
    h = minutes(*argv) / 60
    return '≈ {:.0f} h'.format(h) if h >= 10 else '≈ {:.1f} h'.format(h)


P100 = ('--recipe', 'akiba2017', '--gpu', 'p100', '--interconnect', 'fdr')


def fenced_commands(text, prefix):
    """(command line, output lines) of each ``` block whose first line is `$ <prefix>...`."""
    for block in re.findall(r'```\n\$ (.*?)\n```', text, re.S):
        command, _, output = block.partition('\n')
        if command.startswith(prefix):
            yield command, output.split('\n')


@pytest.mark.parametrize('name', DOCUMENTS)
def test_plan_outputs_pasted_in_the_documents_are_its_output(name):
    for command, pasted in fenced_commands(document(name), 'python -m chainer_resnet.plan'):
        assert plan(*command.split()[3:]) == pasted, command


def test_the_gpu_table_of_virtual_workers():
    rows = [('8 (1 node)', 8, 128), ('64 (8 nodes)', 64, 16), ('128 (16 nodes)', 128, 8)]
    totals = []
    for label, gpus, k in rows:
        argv = P100 + ('--gpus', str(gpus), '--virtual-workers', str(k))
        quoted('README.md', '| {} | {} | 1,024 | 32,768 | {} |'.format(label, k, hours(*argv)))
        totals.append('{:,.0f}'.format(minutes(*argv)))
    paper = minutes(*P100, '--gpus', '1024')
    quoted('README.md', '| 1,024 (the paper) | 1 | 1,024 | 32,768 | 15 min published '
           '({:.1f} modelled) |'.format(paper))
    quoted('README.md', '({} / {:.1f} min;'.format(' / '.join(totals), paper))
    quoted('README.md', 'predicts {:.1f} min for the paper\'s machine'.format(paper))
    quoted('README.md', 'with akiba2017\'s snapshot every epoch, as in the GPU table above, '
           '{:.1f} min'.format(paper))


def test_the_record_row_of_the_paper_is_quoted_as_the_table_gives_it():
    row = next(line for line in plan('--records') if line.startswith('| Akiba et al. 2017'))
    model = row.split('|')[4].strip()                   # '13.1 min'
    quoted('README.md', 'predicted at {} there'.format(model))
    quoted('README.md', '({} with one snapshot at the end'.format(model))


def test_what_dominates_at_1024_p100():
    lines = plan(*P100, '--gpus', '1024', '--gpus-per-node', '8')
    for line in lines[lines.index('| term | seconds | share |'):]:
        if line.startswith('|'):
            quoted('docs/time-to-train.md', line)
    total = minutes(*P100, '--gpus', '1024')
    quoted('docs/time-to-train.md', 'Total {:.2f} min ({:+.1f} % of 15 min)'.format(
        total, 100 * (total / 15 - 1)).replace('-', '−'))
    record = next(r.argv for r in plan_records.RECORDS if r.who.startswith('Akiba'))
    alternatives = ', '.join('`{}` {:.2f} min'.format(' '.join(flag), minutes(*record, *flag))
                             for flag in (('--intra', 'pcie'), ('--allreduce', 'tree'),
                                          ('--overlap', 'backward')))
    quoted('docs/time-to-train.md', alternatives)


def test_virtual_workers_on_128_v100():
    argv = ('--recipe', 'akiba2017', '--gpus', '128', '--gpus-per-node', '8',
            '--gpu', 'v100-fp32', '--interconnect', 'edr')
    quoted('README.md', '({:.2f} → {:.2f} min here'.format(
        minutes(*argv), minutes(*argv, '--virtual-workers', '8')))


def test_the_job_scripts_expected_times():
    one_node, sixteen = hours(*P100, '--gpus', '8'), hours(*P100, '--gpus', '128')
    for script in ('jobs/pbs/pbspro.sh', 'jobs/pbs/torque.sh', 'jobs/slurm/mpirun.sh',
                   'jobs/slurm/srun_pmix.sh'):
        quoted(script, '16 nodes (128 P100) {}, #            1 node (8 P100) {}'.format(
            sixteen, one_node).replace(', #', ',\n#'))
    quoted('jobs/README.md', 'One node (8 GPUs, {} at P100 speed)'.format(one_node))
    quoted('jobs/README.md', '16 nodes (128 GPUs, {} at P100 speed)'.format(sixteen))
    quoted('jobs/README.md', 'workers per GPU ({} at P100 speed'.format(
        hours(*P100, '--gpus', '64', '--virtual-workers', '16')))
    gpus8 = ('--recipe', 'akiba2017', '--gpus', '8', '--interconnect', 'fdr', '--gpu')
    quoted('jobs/local/workstation_gpu.sh', 'akiba2017 on 8 P100 {}, on 8 V100 fp32 / A100 '
           'TF32 {} / {}'.format(hours(*gpus8, 'p100'), hours(*gpus8, 'v100-fp32'),
                                 hours(*gpus8, 'a100-tf32').replace('≈ ', '')))


# --- recipes facts and the trainer's summary lines ---------------------------------------

class _Device:
    """A device as the summary prints it: its name, and NumPy or not (CuPy)."""

    def __init__(self, name, xp):
        self.name, self.xp = name, xp

    def __str__(self):
        return self.name


def _summary(name, ranks, n_train, device, communicator, sets=()):
    """The two lines the trainer's rank 0 prints before training (outcome.summary_lines)."""
    recipe = recipes.resolve(name, sets)
    comm = type(communicator, (), {'size': ranks})()
    sched = schedules.from_recipe(recipe, recipe.workers(ranks), n_train)
    return outcome.summary_lines(recipe, comm, n_train, sched, device,
                                 'results/' + name).split('\n')


def test_the_summary_lines_the_readme_quotes():
    cpu = _Device(str(chainer.get_device('@numpy')), numpy)
    header, device = _summary('demo', 2, 4000, cpu, 'NaiveCommunicator')
    quoted('README.md', header)                                   # make demo's output
    quoted('README.md', device)
    header, device = _summary('demo', 1, 4000, cpu, 'NaiveCommunicator')
    quoted('README.md', header.split('recipe=demo, ')[1])         # one process
    quoted('README.md', device.replace('results/demo', 'results/demo-1p'))
    gpu = _Device('@cupy:0', object())
    header, device = _summary('akiba2017', 8, recipes.IMAGENET_TRAIN_IMAGES, gpu,
                              'PureNcclCommunicator', sets=['world_size_check=false'])
    quoted('README.md', header.split('recipe=akiba2017, ')[1].replace(
        ', train_images=1281167', ''))
    quoted('README.md', device.split(' ', 1)[1].rsplit(' out=', 1)[0])


def test_the_demo_command_is_what_make_demo_runs():
    # Under `make test` the outer make's MAKEFLAGS/MAKELEVEL would add its
    # "Entering directory" lines: this make runs as a user's would.
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS')}
    result = subprocess.run(['make', '--no-print-directory', '-n', 'demo', 'VENV=.venv'],
                            cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    command = ' '.join(result.stdout.replace('\\\n', ' ').split())
    assert 'train_imagenet.py --recipe demo' in command, result.stdout
    quoted('README.md', command)


# --- the doctor's output in jobs/README.md -------------------------------------------------

def _machine_free(lines, venv_bin):
    """Doctor lines without what belongs to one machine: paths, host names."""
    out = []
    for line in lines:
        line = line.replace(venv_bin, '<venv>/bin')
        line = re.sub(r'^(  python +\S+) \(.*\)$', r'\1 (<python>)', line)
        line = re.sub(r'^(  \d+ +)\S+( +\d+/\d+ )', r'\1<host>\2', line)
        out.append(line)
    return out


def test_the_doctor_outputs_pasted_in_jobs_readme():
    from run_mpi import mpiexec
    launcher = mpiexec()
    if launcher is None:
        pytest.skip('no mpiexec')
    blocks = list(fenced_commands(document('jobs/README.md'),
                                  'mpiexec -n 2 python -m chainer_resnet.doctor'))
    blocks += list(fenced_commands(document('jobs/README.md'),
                                   'mpiexec -n 1 python -m chainer_resnet.doctor'))
    assert len(blocks) == 2
    stack = re.search(r'python +(\S+) .*\n +numpy +(\S+)', '\n'.join(blocks[0][1][2:4]))
    if stack.groups() != (platform.python_version(), numpy.__version__):
        pytest.skip('the pasted output is of Python {} with NumPy {} (make test-unit\'s stack)'
                    .format(*stack.groups()))
    venv_bin = os.path.dirname(sys.executable)
    for command, pasted in blocks:
        argv = command.split()
        argv[0], argv[3] = launcher, sys.executable
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, PATH=venv_bin + os.pathsep +
                                         os.environ['PATH']))
        printed = (result.stdout + result.stderr).rstrip('\n').split('\n')
        host = os.uname().nodename
        pasted = [line.replace('vm has', '<host> has') for line in pasted]
        printed = [line.replace(host + ' has', '<host> has') for line in printed]
        assert _machine_free(printed, venv_bin) == _machine_free(
            pasted, '/work/main/.venv/bin'), command
