"""The collective probes: one MPI sum, one ChainerMN allreduce, one fp16 allreduce.

:func:`run_probes` is collective: every rank calls it, with the same
arguments, and the steps inside run in the same order on all ranks. The
numbers it returns are judged on rank 0 by
:func:`chainer_resnet.doctor.checks.check_allreduces`. NumPy, Chainer, CuPy
and MPI are imported inside the functions.
"""


import contextlib
import os

from chainer_resnet.doctor import facts

# What the NCCL probe sets while it runs, to read which network NCCL chose.
NCCL_DEBUG_VARIABLES = ('NCCL_DEBUG', 'NCCL_DEBUG_SUBSYS', 'NCCL_DEBUG_FILE')


def run_probes(MPI, comm, device, intra_rank):
    """This rank's probe results: a dict, for the caller to gather to rank 0.

    Keys, each present only when its step ran: ``gpu``, ``gpu_desc``,
    ``gpu_bus`` (the GPU the trainer would take: id, 'id: name [bus]', PCI
    bus id) or ``gpu_error`` (why there is none); ``mpi_sum`` (the MPI sum of
    rank+1); ``fp16_mpi``, and ``nccl32`` and ``nccl16`` on GPU or ``naive``
    on CPU (the max relative error of each allreduce); ``nccl_net`` and
    ``nccl_net_detail`` on GPU (:func:`~chainer_resnet.doctor.facts.nccl_network`
    of NCCL's INFO output while the communicators started); ``comm_error``
    (the ChainerMN communicator could not be created or used).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    # Each collective step below runs on every rank; a rank that failed an
    # earlier step still takes part (or the others would hang), and later
    # steps are skipped on all ranks once a prerequisite failed anywhere.
    local = {}
    gpu_ok = True
    if device == 'gpu':
        try:
            local['gpu'], local['gpu_desc'], local['gpu_bus'] = select_rank_gpu(
                rank, intra_rank)
        except Exception as e:
            local['gpu_error'] = str(e)
            gpu_ok = False
        gpu_ok = bool(comm.allreduce(int(gpu_ok), op=MPI.MIN))

    local['mpi_sum'] = mpi_rank_sum(MPI, comm)
    local['fp16_mpi'] = fp16_mpi_error(MPI, comm)
    try:
        import chainer
        import chainermn
        if device == 'gpu':
            if gpu_ok:
                target = chainer.get_device('@cupy:{}'.format(local['gpu']))
                with nccl_debug_log() as nccl_log:
                    for key, dtype in (('nccl32', None), ('nccl16', 'float16')):
                        mn = chainermn.create_communicator(
                            'pure_nccl', allreduce_grad_dtype=dtype)
                        local[key] = mean_grad_error(mn, rank, size, target)
                    local['nccl_net'], local['nccl_net_detail'] = facts.nccl_network(
                        nccl_log())
        else:
            mn = chainermn.create_communicator('naive')
            local['naive'] = mean_grad_error(
                mn, rank, size, chainer.get_device('@numpy'))
    except Exception as e:
        local['comm_error'] = '{}: {}'.format(type(e).__name__, e)
    return local


@contextlib.contextmanager
def nccl_debug_log():
    """NCCL's INFO output (INIT and NET) to a file of this process while inside.

    Yields a function that returns what NCCL wrote so far. NCCL reads its
    variables once, at its first use in the process, so this must enclose
    the first communicator; the user's values are back afterwards.
    """
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix='chainer_resnet-doctor-nccl-')
    saved = {name: os.environ.get(name) for name in NCCL_DEBUG_VARIABLES}
    os.environ.update(NCCL_DEBUG='INFO', NCCL_DEBUG_SUBSYS='INIT,NET',
                      NCCL_DEBUG_FILE=os.path.join(folder, 'nccl.%p.log'))

    def read():
        text = []
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), errors='replace') as f:
                text.append(f.read())
        return ''.join(text)
    try:
        yield read
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def mpi_rank_sum(MPI, comm):
    """The MPI_SUM of rank+1 over ``comm`` (collective)."""
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


def fp16_tolerance(size):
    """Relative error allowed for the fp16 allreduce of :func:`grad_pattern`.

    Exact sums up to 2,048 units; the scaling by 1/size rounds twice
    (1/size, then the product); beyond 2,048 ranks the sums round too.
    """
    return 2.0 ** -9 * max(1.0, size / 2048)


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


def select_rank_gpu(rank, intra_rank):
    """(gpu id, 'id: name [bus]', PCI bus id) of this rank's GPU, made current.

    Raises with :func:`chainer_resnet.communication.select_gpu`'s message when
    the node has no GPU for this local rank.
    """
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
