"""Preflight check for a distributed run: ``mpiexec -n N python -m chainer_resnet.doctor``.

Launch it exactly like the training (same launcher, same ranks, same
environment). Rank 0 prints

1. the software stack: Python, NumPy, Chainer/ChainerMN, CuPy, cuDNN, NCCL,
   mpi4py and the MPI library it runs against, next to the ``mpiexec`` /
   ``mpirun`` found on PATH (an MPI of another family than mpi4py's is the
   usual reason why N processes start as N one-rank "jobs");
2. one row per rank: host, rank within the node, the local-rank variable the
   launcher set, ``CUDA_VISIBLE_DEVICES`` and the GPU the trainer will use
   (``comm.intra_rank``, as :func:`chainer_resnet.communication.select_gpu`);
3. the checks, each ``OK``/``WARN``/``FAIL``: the world size and ranks per
   node the job asked for (``--expect-world-size``, ``--expect-gpus-per-node``),
   the same Python and ``NCCL_*`` variables on every rank, one MPI allreduce,
   one allreduce through the ChainerMN communicator the trainer uses
   (``naive`` on CPU, ``pure_nccl`` on GPU) and one fp16 allreduce.

Every ``FAIL:`` line is followed by a ``fix:`` line. Rank 0 decides and
broadcasts the exit status, so every rank exits 0 (all checks passed) or 1;
2 is a usage error. ``--ranks-only`` keeps just the rank-count checks (what the
job scripts still run with ``SKIP_DOCTOR=1``).
"""

import argparse
import faulthandler
import os
import shutil
import subprocess
import sys

import chainer_resnet  # noqa: F401  (must precede chainer: compatibility hook)
from chainer_resnet.communication import LOCAL_RANK_VARIABLES

# Variables a launcher sets to tell a process how many ranks it started.
# Read only to explain a world of one rank (the launcher and mpi4py's MPI
# do not speak to each other).
LAUNCHER_SIZE_VARIABLES = (
    ('OMPI_COMM_WORLD_SIZE', 'Open MPI mpirun/mpiexec'),
    ('PMI_SIZE', 'a PMI launcher (MPICH/Intel MPI/MVAPICH hydra, srun --mpi=pmi2)'),
    ('SLURM_STEP_NUM_TASKS', 'srun'),
)
# The same variables, for the rank: lets rank 0 alone probe `mpiexec --version`
# before MPI is initialised (no fork after MPI/InfiniBand initialisation).
LAUNCHER_RANK_VARIABLES = ('OMPI_COMM_WORLD_RANK', 'PMI_RANK', 'PMIX_RANK',
                           'SLURM_PROCID')
# Environment that must be identical on every rank (forwarded by the launcher).
FORWARDED_PREFIXES = ('NCCL_',)

FIX_SINGLETON = (
    'the launcher did not start one MPI job: each process is a job of its own '
    '(srun without --mpi=pmix? an mpirun/mpiexec of another MPI than the '
    'library mpi4py runs on, printed above?). Launch with '
    'the mpirun of the MPI that mpi4py uses, or srun --mpi=pmix, or rebuild '
    'mpi4py against the site MPI: env MPICC=$(which mpicc) pip install '
    '--no-binary=mpi4py --force-reinstall mpi4py')


class Report:
    """Collects check results on rank 0."""

    def __init__(self):
        self.lines = []
        self.failures = 0

    def ok(self, text):
        self.lines.append('  OK    ' + text)

    def warn(self, text, fix=None):
        self.lines.append('  WARN  ' + text)
        if fix:
            self.lines.append('        fix: ' + fix)

    def fail(self, text, fix):
        self.failures += 1
        self.lines.append('FAIL: ' + text)
        self.lines.append('  fix: ' + fix)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m chainer_resnet.doctor', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu',
                   help="'gpu': check CuPy/cuDNN/NCCL, the GPU of each rank and "
                   "NCCL allreduces (pure_nccl, fp32 and fp16); 'cpu': MPI only")
    p.add_argument('--expect-world-size', type=int, metavar='N',
                   help='the number of ranks the job asked for (nodes x GPUs per node)')
    p.add_argument('--expect-gpus-per-node', type=int, metavar='N',
                   help='ranks expected on every node (one per GPU)')
    p.add_argument('--ranks-only', action='store_true',
                   help='only the rank-count checks: no versions, no allreduce')
    p.add_argument('--timeout', type=float, default=300, metavar='SECONDS',
                   help='a rank still running after this long prints where it '
                   'hangs and exits (default: %(default)s; 0: never)')
    args = p.parse_args(argv)
    for name in ('expect_world_size', 'expect_gpus_per_node'):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error('--{} must be >= 1'.format(name.replace('_', '-')))
    return args


# --- facts gathered before and after MPI start-up ---------------------------

def launcher_rank():
    for name in LAUNCHER_RANK_VARIABLES:
        if name in os.environ:
            return os.environ[name]
    return None


def first_line(text):
    for line in text.splitlines():
        if line.strip():
            return ' '.join(line.split())
    return ''


def probe_launchers():
    """[(name, path, first line of --version)] for mpiexec/mpirun on PATH."""
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


def mpi_family(text):
    """'Open MPI', 'MPICH' (MPICH, MVAPICH, Intel MPI: PMI-compatible) or None."""
    t = text.lower()
    if 'open mpi' in t or 'openrte' in t or 'open rte' in t or 'prte' in t:
        return 'Open MPI'
    if any(k in t for k in ('mpich', 'hydra', 'mvapich', 'intel(r) mpi')):
        return 'MPICH'
    return None


def rank_facts(MPI):
    """This rank's row of the table (plain data, gathered to rank 0)."""
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
        enabled = bool(chainer is not None and chainer.backends.cuda.cudnn_enabled)
        try:
            cudnn = _cupy_library('cudnn')
            rows.append(('cuDNN', '{} (chainer uses it: {})'.format(
                cudnn.getVersion(), enabled)))
        except Exception as e:
            rows.append(('cuDNN', 'unavailable: {}'.format(e)))
        if device == 'gpu' and not enabled:
            findings.append(('WARN', 'Chainer does not use cuDNN: training runs, '
                             'several times slower', 'install CuPy with cuDNN '
                             '(cupy-cuda12x 13.x and nvidia-cudnn-cu12)'))
        try:
            nccl = _cupy_library('nccl')
            rows.append(('NCCL', str(nccl.get_version())))
        except Exception as e:
            rows.append(('NCCL', 'unavailable: {}'.format(e)))
            if device == 'gpu':
                findings.append(('FAIL', 'NCCL is unavailable in CuPy, the '
                                 'pure_nccl communicator cannot start',
                                 'install CuPy with NCCL support (import '
                                 'cupy.cuda.nccl must work)'))
    return rows, findings


def _cupy_library(name):
    """cupy.cuda.<name> (cudnn, nccl), or where newer CuPy keeps it."""
    import importlib
    try:
        return importlib.import_module('cupy.cuda.' + name)
    except ImportError:
        return importlib.import_module('cupy_backends.cuda.libs.' + name)


# --- checks that need every rank (collectives: same order on all ranks) ------

def check_mpi_allreduce(MPI, comm):
    import numpy
    mine = numpy.array([comm.rank + 1], dtype=numpy.int64)
    total = numpy.zeros_like(mine)
    comm.Allreduce(mine, total, op=MPI.SUM)
    return int(total[0])


def grad_pattern(rank, size, n=257):
    """(this rank's test gradient, the exact mean over `size` ranks), float32.

    The values are 1 or 2 units of 2**-10, so every partial sum over up to
    1,024 ranks is exact in fp16 (11-bit significand): an fp16 allreduce then
    differs from the mean only by the final x 1/size rounding, at any scale.
    (Summing arbitrary values in fp16 over 1,024 ranks drifts by several per
    cent: a property of fp16, not a fault the doctor should report.)
    """
    import numpy
    i = numpy.arange(n)
    unit = 2.0 ** -10
    if size <= 1024:
        mine = 1 + (rank + i) % 2
        # Ranks r < size with r + i odd: the odd r for even i, else the even r.
        twos = numpy.where(i % 2 == 0, size // 2, (size + 1) // 2)
        mean = 1 + twos / size
    else:
        mine, mean = numpy.ones(n), numpy.ones(n)
    return ((mine * unit).astype(numpy.float32),
            (mean * unit).astype(numpy.float32))


def mean_grad_error(comm, rank, size, device):
    """Max relative error of ChainerMN's multi_node_mean_grad on a tiny link."""
    import chainer
    import numpy
    link = chainer.Link()
    with link.init_scope():
        link.w = chainer.Parameter(numpy.zeros(257, dtype=numpy.float32))
    mine, expected = grad_pattern(rank, size)
    link.w.grad = mine.copy()
    link.to_device(device)
    comm.multi_node_mean_grad(link)
    got = chainer.backend.CpuDevice().send(link.w.grad)
    if not numpy.isfinite(got).all():
        return float('inf')
    return float(numpy.max(numpy.abs(got - expected) / expected))


def fp16_mpi_error(MPI, comm):
    """fp16 allreduce over MPI: fp16 on the wire, fp16 sum, then 1/size.

    The arithmetic of pure_nccl with allreduce_grad_dtype=float16 (cast, sum
    in fp16, scale in fp16), on MPI with a user-defined sum because MPI has no
    fp16 type; checks the fp16 path and MPI user ops, not NCCL.
    """
    import numpy

    def sum16(inbuf, inoutbuf, datatype):
        acc = numpy.frombuffer(inoutbuf, dtype=numpy.float16)
        acc += numpy.frombuffer(inbuf, dtype=numpy.float16)

    mine, expected = grad_pattern(comm.rank, comm.size)
    send = mine.astype(numpy.float16)
    recv = numpy.empty_like(send)
    op = MPI.Op.Create(sum16, commute=True)
    try:
        comm.Allreduce([send, MPI.UINT16_T], [recv, MPI.UINT16_T], op=op)
    finally:
        op.Free()
    recv *= numpy.float16(1.0 / comm.size)
    got = recv.astype(numpy.float32)
    if not numpy.isfinite(got).all():
        return float('inf')
    return float(numpy.max(numpy.abs(got - expected) / expected))


def fp16_tolerance(size):
    """Relative error allowed for the fp16 allreduce of :func:`grad_pattern`.

    Exact sums up to 2,048 units; the scaling by 1/size rounds twice
    (1/size, then the product); beyond 2,048 ranks the sums round too.
    """
    return 2.0 ** -9 * max(1.0, size / 2048)


def select_rank_gpu(rank, intra_rank):
    """(gpu id, description) of this rank, or raise with select_gpu's message."""
    import types
    import cupy
    from chainer_resnet.communication import select_gpu
    gpu = select_gpu(types.SimpleNamespace(rank=rank, intra_rank=intra_rank))
    cupy.cuda.Device(gpu).use()
    props = cupy.cuda.runtime.getDeviceProperties(gpu)
    name = props['name']
    name = name.decode() if isinstance(name, bytes) else str(name)
    bus = '{:04x}:{:02x}:{:02x}'.format(props.get('pciDomainID', 0),
                                        props.get('pciBusID', 0),
                                        props.get('pciDeviceID', 0))
    return gpu, '{}: {} [{}]'.format(gpu, name, bus), bus


# --- the run ------------------------------------------------------------------

def run(argv=None):
    """Run the checks; returns the exit status (the same on every rank)."""
    args = parse_args(argv)
    if args.timeout > 0:
        # A watchdog thread: works even while a rank is blocked inside MPI/NCCL.
        faulthandler.dump_traceback_later(args.timeout, exit=True)

    launchers = None
    if launcher_rank() in (None, '0') and not args.ranks_only:
        launchers = probe_launchers()   # before MPI starts: no fork after it

    try:
        from mpi4py import MPI
    except Exception as e:
        print('FAIL: cannot start MPI through mpi4py: {}\n  fix: install mpi4py '
              'built against the site MPI (env MPICC=$(which mpicc) pip install '
              '--no-binary=mpi4py mpi4py) and load the same MPI module in the '
              'job'.format(e), flush=True)
        return 1
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    facts = rank_facts(MPI)
    rows = comm.gather(facts, root=0)
    hosts = comm.bcast([r['host'] for r in rows] if rank == 0 else None, root=0)
    intra = intra_ranks(hosts)
    intra_rank = intra[rank][0]

    # Each collective step below runs on every rank; a rank that failed an
    # earlier step still takes part (or the others would hang), and later
    # steps are skipped on all ranks once a prerequisite failed anywhere.
    local = {}          # this rank's results, gathered at the end
    gpu_ok = True
    if args.device == 'gpu' and not args.ranks_only:
        try:
            local['gpu'], local['gpu_desc'], local['gpu_bus'] = select_rank_gpu(
                rank, intra_rank)
        except Exception as e:
            local['gpu_error'] = str(e)
            gpu_ok = False
        gpu_ok = bool(comm.allreduce(int(gpu_ok), op=MPI.MIN))

    if not args.ranks_only:
        local['mpi_sum'] = check_mpi_allreduce(MPI, comm)
        local['fp16_mpi'] = fp16_mpi_error(MPI, comm)
        try:
            import chainer
            import chainermn
            if args.device == 'gpu':
                if gpu_ok:
                    device = chainer.get_device('@cupy:{}'.format(local['gpu']))
                    for key, dtype in (('nccl32', None), ('nccl16', 'float16')):
                        mn = chainermn.create_communicator(
                            'pure_nccl', allreduce_grad_dtype=dtype)
                        local[key] = mean_grad_error(mn, rank, size, device)
            else:
                mn = chainermn.create_communicator('naive')
                local['naive'] = mean_grad_error(
                    mn, rank, size, chainer.get_device('@numpy'))
        except Exception as e:
            local['comm_error'] = '{}: {}'.format(type(e).__name__, e)

    results = comm.gather(local, root=0)
    status = 0
    if rank == 0:
        status = report(args, size, rows, intra, results, launchers)
    status = comm.bcast(status, root=0)
    faulthandler.cancel_dump_traceback_later()
    return status


def report(args, size, rows, intra, results, launchers):
    """Print everything (rank 0); return the exit status."""
    out = []
    nodes = len({r['host'] for r in rows})
    out.append('chainer_resnet doctor: {} rank(s) on {} node(s), device {}{}'.format(
        size, nodes, args.device, ' (rank counts only)' if args.ranks_only else ''))
    rep = Report()

    from mpi4py import MPI
    import mpi4py
    library = first_line(MPI.Get_library_version())
    if args.ranks_only:
        out.append('  mpi4py {} on {}'.format(mpi4py.__version__, library))
    else:
        out.append('== software ==')
        sw_rows, findings = software_versions(args.device)
        config = mpi4py.get_config()
        sw_rows.append(('mpi4py', '{} (build config: {})'.format(
            mpi4py.__version__, ', '.join('{}={}'.format(k, v) for k, v in
                                          sorted(config.items())) or
            'none recorded: a binary wheel')))
        sw_rows.append(('MPI library', library + ' (the libmpi mpi4py runs on)'))
        for name, path, version in launchers or []:
            sw_rows.append((name, '{}: {}'.format(path, version) if path else version))
        forwarded = rows[0]['forwarded']
        sw_rows.append(('NCCL env', ' '.join('{}={}'.format(k, v) for k, v in
                                             forwarded.items()) or '(none set)'))
        width = max(len(n) for n, _ in sw_rows)
        out.extend('  {:<{w}}  {}'.format(n, t, w=width) for n, t in sw_rows)
        for level, text, fix in findings:
            (rep.fail if level == 'FAIL' else rep.warn)(text, fix)
        lib_family = mpi_family(library)
        for name, path, version in launchers or []:
            fam = mpi_family(version) if path else None
            if fam and lib_family and fam != lib_family:
                rep.warn('{} on PATH is {} but mpi4py runs on {}: launched with '
                         'it, every process would be a one-rank job'.format(
                             name, fam, lib_family),
                         'put the {} of the MPI mpi4py uses first on PATH (module '
                         'load), or rebuild mpi4py against this one'.format(name))

    out.append('== ranks ==')
    table = [('rank', 'host', 'local', 'local-rank variable',
              'CUDA_VISIBLE_DEVICES', 'GPU')]
    for rank, (row, (ir, isz), res) in enumerate(zip(rows, intra, results)):
        gpu = res.get('gpu_desc') or ('error' if 'gpu_error' in res else '-')
        table.append((str(rank), row['host'], '{}/{}'.format(ir, isz),
                      row['local_var'], row['cuda_visible'], gpu))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out.extend('  ' + '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
               for r in table)

    out.append('== checks ==')
    check_world(args, size, rows, rep)
    check_layout(args, size, rows, intra, rep)
    check_same_environment(rows, rep)
    if not args.ranks_only:
        check_results(args, size, rows, results, rep)

    out.extend(rep.lines)
    if rep.failures:
        out.append('doctor: {} check(s) FAILED (see the FAIL: lines)'.format(
            rep.failures))
    else:
        out.append('doctor: all checks passed')
    print('\n'.join(out), flush=True)
    return 1 if rep.failures else 0


def check_world(args, size, rows, rep):
    expected = args.expect_world_size
    if expected is None:
        rep.ok('world size {} (no --expect-world-size given)'.format(size))
        return
    if size == expected:
        rep.ok('world size {} (expected {})'.format(size, expected))
        return
    if size == 1:
        evidence = [(n, v, what) for n, v, what in rows[0]['launcher_size']
                    if v.isdigit() and int(v) > 1]
        text = 'only 1 rank(s) started but the job asked for {}'.format(expected)
        if evidence:
            n, v, what = evidence[0]
            text += ('; the launcher ({}) started this process as one of {} '
                     '({}={})'.format(what, v, n, v))
        rep.fail(text, FIX_SINGLETON)
    else:
        rep.fail('{} rank(s) started but the job asked for {}'.format(size, expected),
                 'make the launcher start nodes x GPUs-per-node ranks (mpirun -np, '
                 'srun --ntasks, #PBS select=N:...:mpiprocs=8, #SBATCH '
                 '--ntasks-per-node=8) and pass the same number here; the job '
                 'scripts derive it from the allocation and GPUS_PER_NODE')


def check_layout(args, size, rows, intra, rep):
    per_node = {}
    for row, (_, isz) in zip(rows, intra):
        per_node[row['host']] = isz
    counts = sorted(set(per_node.values()))
    expected = args.expect_gpus_per_node
    if expected is None:
        rep.ok('ranks per node: {}'.format(', '.join(map(str, counts))))
        return
    wrong = {h: n for h, n in per_node.items() if n != expected}
    if not wrong:
        rep.ok('{} rank(s) on each of {} node(s) (expected {} per node)'.format(
            expected, len(per_node), expected))
        return
    sample = ', '.join('{} has {}'.format(h, n) for h, n in sorted(wrong.items())[:4])
    rep.fail('ranks per node differ from the {} expected: {}'.format(expected, sample),
             'place exactly {0} ranks on every node: mpirun --map-by ppr:{0}:node '
             '(Open MPI) or -ppn {0} (hydra), #PBS ...:mpiprocs={0}, #SBATCH '
             '--ntasks-per-node={0}; or set GPUS_PER_NODE to the GPUs a node '
             'really has'.format(expected))


def check_same_environment(rows, rep):
    ref = rows[0]
    odd_python = [r for r, row in enumerate(rows) if row['python'] != ref['python']]
    if odd_python:
        rep.fail('rank {} runs {} but rank 0 runs {}'.format(
            odd_python[0], rows[odd_python[0]]['python'], ref['python']),
            'activate the same virtualenv on every node and forward PATH to '
            'every rank (mpirun -x PATH, srun --export=ALL)')
    odd_env = [r for r, row in enumerate(rows) if row['forwarded'] != ref['forwarded']]
    if odd_env:
        r = odd_env[0]
        mine, theirs = ref['forwarded'], rows[r]['forwarded']
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        rep.fail('rank {} sees different NCCL_* variables than rank 0 ({})'.format(
            r, ', '.join(diff)),
            'forward the environment to every rank: Open MPI mpirun -x NAME for '
            'each variable, hydra -genvall, srun --export=ALL')
    if not odd_python and not odd_env:
        rep.ok('same Python and NCCL_* variables on every rank')


def check_results(args, size, rows, results, rep):
    expected_sum = size * (size + 1) // 2
    bad = [r for r, res in enumerate(results) if res.get('mpi_sum') != expected_sum]
    if bad:
        rep.fail('MPI allreduce: rank {} got {} for the sum of rank+1, expected {}'
                 .format(bad[0], results[bad[0]].get('mpi_sum'), expected_sum),
                 'the MPI library is broken or mismatched; rebuild mpi4py against '
                 'the MPI the launcher belongs to')
    else:
        rep.ok('MPI allreduce: sum of rank+1 over {} rank(s) = {}'.format(
            size, expected_sum))

    gpu_errors = [(r, res['gpu_error']) for r, res in enumerate(results)
                  if 'gpu_error' in res]
    if gpu_errors:
        r, err = gpu_errors[0]
        rep.fail('rank {} ({}) has no GPU of its own: {}'.format(
            r, rows[r]['host'], err),
            'give every rank a GPU: as many ranks per node as GPUs, and do not '
            'restrict CUDA_VISIBLE_DEVICES per rank (srun --gpus-per-task/'
            '--gpu-bind): the trainer takes GPU = local rank among the node\'s GPUs')
    if args.device == 'gpu':
        seen = {}
        for r, res in enumerate(results):
            if 'gpu_bus' in res:
                key = (rows[r]['host'], res['gpu_bus'])
                if key in seen:
                    rep.fail('ranks {} and {} share GPU {} on {}'.format(
                        seen[key], r, res['gpu_bus'], rows[r]['host']),
                        'one rank per GPU: check CUDA_VISIBLE_DEVICES and the '
                        'ranks per node')
                    break
                seen[key] = r

    comm_errors = [(r, res['comm_error']) for r, res in enumerate(results)
                   if 'comm_error' in res]
    if comm_errors:
        r, err = comm_errors[0]
        what = 'pure_nccl (NCCL)' if args.device == 'gpu' else 'naive (MPI)'
        rep.fail('ChainerMN {} communicator failed on rank {}: {}'.format(what, r, err),
                 'rerun with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET; set '
                 'NCCL_SOCKET_IFNAME to an interface every node has (ip -br addr) '
                 'and NCCL_IB_HCA to the HCA ports (ibstat); NCCL_IB_DISABLE=1 '
                 'only to tell InfiniBand problems from others'
                 if args.device == 'gpu' else
                 'check that chainer 7.8.1 and mpi4py import on every rank')

    tol16 = fp16_tolerance(size)
    checks = [('fp16_mpi', 'fp16 allreduce over MPI (fp16 on the wire, fp16 sum, '
               'x 1/size, as pure_nccl does{})'.format(
                   '' if args.device == 'gpu' else
                   '; CPU training itself averages in fp32'), tol16)]
    if args.device == 'gpu':
        checks += [('nccl32', 'NCCL allreduce (pure_nccl, fp32): '
                    'multi_node_mean_grad equals the mean', 1e-5),
                   ('nccl16', 'NCCL fp16 allreduce (pure_nccl, '
                    'allreduce_grad_dtype=float16) vs the fp32 mean', tol16)]
    else:
        checks += [('naive', 'ChainerMN naive communicator (MPI, fp32): '
                    'multi_node_mean_grad equals the mean', 1e-5)]
    for key, text, tol in checks:
        errors = [(r, res[key]) for r, res in enumerate(results) if key in res]
        if not errors:
            if not comm_errors and not gpu_errors:
                rep.fail(text + ': did not run', 'see the errors above')
            continue
        worst_rank, worst = max(errors, key=lambda e: e[1])
        if worst <= tol:
            rep.ok('{}: max relative error {:.1e} (tolerance {:.1e})'.format(
                text, worst, tol))
        else:
            rep.fail('{}: max relative error {:.3g} on rank {} exceeds {:.1e}'.format(
                text, worst, worst_rank, tol),
                'an allreduce returns wrong numbers: a mismatched or broken '
                'MPI/NCCL; rerun with NCCL_DEBUG=INFO and compare library versions '
                'on all nodes')


def main(argv=None):
    return run(argv)


if __name__ == '__main__':
    sys.exit(main())
