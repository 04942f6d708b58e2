"""What the doctor finds out: launcher variables, one row per rank, software versions.

These functions read the environment, the interpreter and the installed
libraries and return plain data (strings, tuples, dicts) for
:mod:`chainer_resnet.doctor.checks` to judge. None of them starts MPI: those
that need it take the ``MPI`` module from the caller.
"""

import os
import shutil
import subprocess
import sys

from chainer_resnet import gpu
from chainer_resnet.communication import (  # noqa: F401  (launcher_rank: the doctor's too)
    LAUNCHER_RANK_VARIABLES, LOCAL_RANK_VARIABLES, launcher_rank)

# Variables a launcher sets to tell a process how many ranks it started.
# Read only to explain a world of one rank (the launcher and mpi4py's MPI
# do not speak to each other).
LAUNCHER_SIZE_VARIABLES = (
    ('OMPI_COMM_WORLD_SIZE', 'Open MPI mpirun/mpiexec'),
    ('PMI_SIZE', 'a PMI launcher (MPICH/Intel MPI/MVAPICH hydra, srun --mpi=pmi2)'),
    ('SLURM_STEP_NUM_TASKS', 'srun'),
)
# LAUNCHER_RANK_VARIABLES (communication.py), for the rank: lets rank 0 alone probe
# `mpiexec --version` before MPI is initialised (no fork after MPI/InfiniBand start).
# Environment that must be identical on every rank (forwarded by the launcher).
FORWARDED_PREFIXES = ('NCCL_',)
# What each process-management interface leaves in a rank's environment, in
# the order they are looked for: PMIx (srun --mpi=pmix, Open MPI's mpirun),
# then PMI-1/PMI-2 (MPICH's hydra, srun --mpi=pmi2).
PMI_VARIABLES = (('PMIX_RANK', 'PMIx'), ('PMIX_NAMESPACE', 'PMIx'),
                 ('PMI_FD', 'PMI-1/2'), ('PMI_PORT', 'PMI-1/2'), ('PMI_RANK', 'PMI-1/2'))


def launcher_pmi():
    """(interface, evidence, launcher) of the launcher that started this process.

    ``interface``: 'PMIx', 'PMI-1/2' or None (no launcher variables: a
    singleton); ``evidence``: the variable that says so; ``launcher``: 'Open
    MPI mpirun' (``OMPI_COMM_WORLD_SIZE``), 'srun' (``SLURM_STEP_NUM_TASKS``)
    or 'the launcher'. Read before MPI starts: it is what MPI_Init will try
    to talk to.
    """
    for name, interface in PMI_VARIABLES:
        if name in os.environ:
            if 'OMPI_COMM_WORLD_SIZE' in os.environ:
                launcher = 'Open MPI mpirun'
            elif 'SLURM_STEP_NUM_TASKS' in os.environ:
                launcher = 'srun'
            else:
                launcher = 'the launcher'
            return interface, name, launcher
    return None, None, None


def first_line(text):
    """The first non-blank line of ``text``, white space folded; '' if none."""
    for line in text.splitlines():
        if line.strip():
            return ' '.join(line.split())
    return ''


def probe_launchers():
    """[(name, path, first line of --version)] for mpiexec/mpirun on PATH.

    ``path`` is None (and the text 'not found on PATH') for a launcher that
    is not there. Runs subprocesses: call it before MPI starts.
    """
    found = []
    for name in ('mpiexec', 'mpirun'):
        path = shutil.which(name)
        if path is None:
            found.append((name, None, 'not found on PATH'))
            continue
        try:
            out = subprocess.run([path, '--version'], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=20,
                                 stdin=subprocess.DEVNULL)
            text = out.stdout.decode(errors='replace')
            if 'HYDRA' in text and 'Version:' in text:
                # MPICH's hydra prints the version on its second line.
                text = 'HYDRA ' + first_line(text.split('Version:', 1)[1])
            found.append((name, path, first_line(text) or '(no output)'))
        except (OSError, subprocess.SubprocessError) as e:
            found.append((name, path, 'could not run --version: {}'.format(e)))
    return found


def nccl_network(text):
    """(network, detail) NCCL chose, from its ``NCCL_DEBUG=INFO`` output.

    ``network``: 'IB' (InfiniBand or RoCE), 'Socket' (TCP), another net
    plugin's name, or None when the text does not say; ``detail``: NCCL's
    line naming the devices (``NET/IB : Using [0]mlx5_0:1/IB ...`` or
    ``NET/Socket : Using [0]eth0:...``), '' if none. NCCL says it in
    ``Using network X`` (2.x), and in each connection ``via NET/X/...``.
    """
    network, detail = None, ''
    for line in text.splitlines():
        info = line.split('NCCL INFO ', 1)[-1].strip()
        if info.startswith('Using network '):
            network = info[len('Using network '):].strip()
        elif network is None and ' via NET/' in info:
            network = info.split(' via NET/', 1)[1].split('/', 1)[0]
        if info.startswith(('NET/IB : Using', 'NET/Socket : Using')):
            detail = info
    if network is None and 'NET/IB : No device found' in text and \
            'NET/Socket : Using' in text:
        network = 'Socket'
    if network is not None and network.startswith('NET/Socket'):
        network = 'Socket'
    return network, detail


def rank_facts(MPI):
    """This rank's row of the table (plain data, gathered to rank 0).

    Keys: ``host`` (MPI processor name), ``python`` (the executable),
    ``local_var`` ('NAME=value' of the first local-rank variable the launcher
    set, or '-'), ``cuda_visible`` (``CUDA_VISIBLE_DEVICES`` or '(unset)'),
    ``forwarded`` ({name: value} of the ``NCCL_*`` variables) and
    ``launcher_size`` ([(name, value, launcher)] of the size variables set).
    """
    local = [(n, os.environ[n]) for n in LOCAL_RANK_VARIABLES if n in os.environ]
    return {
        'host': MPI.Get_processor_name(),
        'python': sys.executable,
        'local_var': '{}={}'.format(*local[0]) if local else '-',
        'cuda_visible': os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)'),
        'forwarded': {k: v for k, v in sorted(os.environ.items())
                      if k.startswith(FORWARDED_PREFIXES)},
        'launcher_size': [(n, os.environ[n], what) for n, what in
                          LAUNCHER_SIZE_VARIABLES if n in os.environ],
    }


def intra_ranks(hosts):
    """(intra_rank, intra_size) per rank, grouped by host name as ChainerMN does."""
    by_host = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    return [(by_host[h].index(r), len(by_host[h])) for r, h in enumerate(hosts)]


def mpi_versions(MPI):
    """{'library', 'mpi4py', 'config'}: the libmpi mpi4py runs on (first line of
    its version), mpi4py's version and its build configuration (a dict, empty
    for a binary wheel)."""
    import mpi4py
    return {'library': first_line(MPI.Get_library_version()),
            'mpi4py': mpi4py.__version__, 'config': mpi4py.get_config()}


def software_versions(device):
    """[(name, text)] and a list of (level, text, fix) findings, on rank 0."""
    import numpy
    rows = [('python', '{} ({})'.format(sys.version.split()[0], sys.executable)),
            ('numpy', numpy.__version__)]
    findings = []
    try:
        import chainer
        import chainermn  # noqa: F401
        rows.append(('chainer', '{} (chainermn {})'.format(
            chainer.__version__, getattr(chainermn, '__version__', 'bundled'))))
    except Exception as e:  # a broken install is what the doctor is for
        rows.append(('chainer', 'import failed: {}'.format(e)))
        findings.append(('FAIL', 'cannot import chainer/chainermn: {}'.format(e),
                         'pip install chainer==7.8.1 into the environment the '
                         'job activates (VENV)'))
        chainer = None
    try:
        import cupy
    except Exception as e:
        cupy = None
        reason = 'not installed' if isinstance(e, ImportError) else str(e)
        rows.append(('cupy', reason))
        rows.append(('cuDNN', 'unavailable (no CuPy)'))
        rows.append(('NCCL', 'unavailable (no CuPy)'))
        if device == 'gpu':
            findings.append(('FAIL', 'CuPy is not importable ({})'.format(reason),
                             'pip install cupy-cuda12x (or the wheel for your '
                             'CUDA) into the job\'s environment'))
    if cupy is not None:
        try:
            runtime = cupy.cuda.runtime.runtimeGetVersion()
            driver = cupy.cuda.runtime.driverGetVersion()
            count = cupy.cuda.runtime.getDeviceCount()
            cuda = 'CUDA runtime {}, driver {}, {} GPU(s) visible to rank 0'.format(
                runtime, driver, count)
        except Exception as e:
            cuda = 'CUDA unusable: {}'.format(e)
            if device == 'gpu':
                findings.append(('FAIL', cuda, 'check the driver/CUDA module and '
                                 'that the job was given GPUs'))
        rows.append(('cupy', '{} ({})'.format(cupy.__version__, cuda)))
        cudnn_on, cudnn_text = gpu.cudnn_status()
        if chainer is not None:
            # What Chainer decided at import, which is what a run will do.
            cudnn_on = bool(chainer.backends.cuda.cudnn_enabled)
        rows.append(('cuDNN', cudnn_text))
        rows.append(('convolutions', gpu.convolution_path(cudnn_on)))
        if device == 'gpu' and not cudnn_on:
            findings.append(('WARN', 'Chainer will not use cuDNN ({}): convolutions, BN and '
                             'pooling run as Chainer\'s own kernels (im2col + GEMM), '
                             'slower'.format(cudnn_text),
                             'cupy-cuda12x 13.x with pip install "{}" (README, "Supported '
                             'GPU stacks")'.format(gpu.PIP_CUDNN)))
        nccl_ok, nccl_text = gpu.nccl_status()
        rows.append(('NCCL', nccl_text))
        if device == 'gpu' and not nccl_ok:
            findings.append(('FAIL', 'NCCL is unavailable to CuPy: the pure_nccl '
                             'communicator cannot start', nccl_text))
    return rows, findings
