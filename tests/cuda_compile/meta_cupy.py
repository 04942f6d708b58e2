"""A NumPy-backed stand-in for CuPy that records every kernel the code asks it to launch.

Installed in ``sys.modules`` as ``cupy`` (and ``cupy.cuda``, ``cupyx``, ...)
*before* Chainer is imported, it makes Chainer believe a GPU is there, so that
Chainer, ChainerMN and chainer_resnet take their GPU code paths (``forward_gpu``,
``update_core_gpu``, ``pure_nccl``) on a machine without one. Array routines
(``cupy.empty``, ``x.sum()``, ``x + y``, ``cupy.tensordot``) run in NumPy on the
host; the three kinds of user kernel, ``ElementwiseKernel``, ``ReductionKernel``
and ``RawKernel``, are not run: each launch is *recorded* with the kernel's
definition (the exact arguments the code constructed it with) and the type,
shape and strides of every argument, and gives zero-filled outputs of the
shape and dtype CuPy would allocate.

Those records are what :mod:`compile_kernels` turns into CUDA source with
CuPy's own code generator and compiles with NVRTC, on the CuPy wheels users
install. Arrays and device memory are in :mod:`meta_arrays` (host memory with
real addresses, so ChainerMN's buffers behave as on a GPU); NCCL is a one-rank
NCCL that copies.

What it cannot see: kernels that CuPy itself builds for its own routines
(ufuncs, reductions such as ``sum``, ``astype`` copies, cuBLAS/CUB calls), and
anything a real GPU would compute differently: outputs of recorded kernels are
zeros, so values after one are not meaningful. Code that needs an API this
stand-in lacks fails loudly (AttributeError naming it), never silently.
"""

import ctypes
import json
import sys
import time
import types

import numpy

from meta_arrays import (Device, MemoryPointer, alloc, array, asarray, asnumpy,  # noqa: F401
                         get_array_module, ndarray, _wrapped)

RECORDS = []
_SEEN = set()

# NCCL data type ids (nccl.h), as CuPy's nccl module exposes them.
NCCL_TYPES = {'int8': 0, 'uint8': 1, 'int32': 2, 'uint32': 3, 'int64': 4,
              'uint64': 5, 'float16': 6, 'float32': 7, 'float64': 8}


def _caller():
    """'module:function' of the first frame outside this file (who launched)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return '?'
    return '{}:{}'.format(frame.f_globals.get('__name__', '?'), frame.f_code.co_name)


def _record(entry):
    key = json.dumps(entry, sort_keys=True)
    if key not in _SEEN:
        _SEEN.add(key)
        RECORDS.append(dict(entry, caller=_caller()))


# ---------------------------------------------------------------- kernels

def _describe(arg):
    """What CuPy's code generator needs to know of one launch argument."""
    if isinstance(arg, ndarray):
        return {'kind': 'ndarray', 'dtype': arg.dtype.name, 'shape': list(arg.shape),
                'strides': list(arg.strides)}
    if isinstance(arg, MemoryPointer):
        return {'kind': 'pointer'}
    if isinstance(arg, numpy.generic):
        return {'kind': 'scalar', 'dtype': arg.dtype.name}
    if isinstance(arg, (bool, int, float, complex)):
        return {'kind': 'scalar', 'dtype': type(arg).__name__}
    raise TypeError('meta-CuPy: kernel argument of type {} is not supported'.format(
        type(arg).__name__))


def parse_params(text):
    """[(raw, type, name)] of a CuPy parameter list such as 'raw T x, int32 n'."""
    params = []
    for item in text.split(','):
        words = item.split()
        if not words:
            continue
        raw = words[0] == 'raw'
        if raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError('meta-CuPy: cannot parse parameter {!r}'.format(item))
        params.append((raw, words[0], words[1]))
    return params


def _is_dtype_name(name):
    try:
        numpy.dtype(name)
    except TypeError:
        return False
    return len(name) > 1     # one-letter names are type placeholders ('T'), not 'b'


def _bind_types(out_params, outs, in_params, in_args):
    """Type placeholder -> dtype from the array arguments, outputs first (CuPy's rule)."""
    bound = {}
    for params, args in ((out_params, outs), (in_params, in_args)):
        for (raw, ctype, name), arg in zip(params, args):
            if isinstance(arg, ndarray) and not _is_dtype_name(ctype):
                bound.setdefault(ctype, arg.dtype)
    return bound


def _out_dtype(ctype, bound):
    return numpy.dtype(ctype) if _is_dtype_name(ctype) else bound[ctype]


class ElementwiseKernel:
    """Records its launches; outputs are zero-filled arrays of CuPy's shape and dtype."""

    def __init__(self, in_params, out_params, operation, name='kernel', reduce_dims=True,
                 preamble='', no_return=False, return_tuple=False, **kwargs):
        self.definition = {'in_params': in_params, 'out_params': out_params,
                           'operation': operation, 'name': name,
                           'reduce_dims': reduce_dims, 'preamble': preamble,
                           'kwargs': {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in kwargs.items()}}
        self.in_params = parse_params(in_params)
        self.out_params = parse_params(out_params)
        self.no_return, self.return_tuple = no_return, return_tuple
        self.name = name

    def __call__(self, *args, size=-1, stream=None, block_size=128):
        nin = len(self.in_params)
        if len(args) not in (nin, nin + len(self.out_params)):
            raise TypeError('Wrong number of arguments for {!r}'.format(self.name))
        in_args, outs = list(args[:nin]), list(args[nin:])
        given = bool(outs)
        bound = _bind_types(self.out_params, outs, self.in_params, in_args)
        if not outs:
            arrays = [a._a for (raw, _, _), a in zip(self.in_params, in_args)
                      if isinstance(a, ndarray) and not raw]
            shape = (numpy.broadcast_shapes(*[a.shape for a in arrays]) if arrays
                     else (size,))
            outs = [ndarray(shape, _out_dtype(ctype, bound))
                    for raw, ctype, name in self.out_params]
        _record({'kind': 'elementwise', 'definition': self.definition,
                 'args': [_describe(a) for a in in_args + outs], 'size': size,
                 'outputs_given': given})
        if self.no_return:
            return None
        if len(outs) == 1 and not self.return_tuple:
            return outs[0]
        return tuple(outs)


class ReductionKernel:
    """Records its launches; the output is a zero-filled array of the reduced shape."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                 identity, name='reduce_kernel', reduce_type=None, reduce_dims=True,
                 preamble='', options=()):
        self.definition = {'in_params': in_params, 'out_params': out_params,
                           'map_expr': map_expr, 'reduce_expr': reduce_expr,
                           'post_map_expr': post_map_expr,
                           'identity': None if identity is None else str(identity),
                           'name': name, 'reduce_type': reduce_type,
                           'reduce_dims': reduce_dims, 'preamble': preamble,
                           'options': list(options)}
        self.in_params = parse_params(in_params)
        self.out_params = parse_params(out_params)
        self.name = name

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None):
        nin = len(self.in_params)
        in_args, outs = list(args[:nin]), list(args[nin:])
        if out is not None:
            outs = [out]
        given = bool(outs)
        arrays = [a._a for (raw, _, _), a in zip(self.in_params, in_args)
                  if isinstance(a, ndarray) and not raw]
        shape = numpy.broadcast_shapes(*[a.shape for a in arrays])
        if not outs:
            bound = _bind_types((), (), self.in_params, in_args)
            reduced = numpy.zeros(shape, numpy.int8).sum(axis=axis, keepdims=keepdims)
            outs = [ndarray(numpy.shape(reduced), _out_dtype(ctype, bound))
                    for raw, ctype, name in self.out_params]
        _record({'kind': 'reduction', 'definition': self.definition,
                 'args': [_describe(a) for a in in_args + outs],
                 'broadcast_shape': list(shape),
                 'axis': list(axis) if isinstance(axis, tuple) else axis,
                 'keepdims': keepdims, 'outputs_given': given})
        return outs[0]


class RawKernel:
    """Records its launches (the source is compiled as given, as CuPy does)."""

    def __init__(self, code, name, options=(), backend='nvrtc', translate_cucomplex=False,
                 enable_cooperative_groups=False, jitify=False):
        self.definition = {'code': code, 'name': name, 'options': list(options),
                           'backend': backend, 'translate_cucomplex': translate_cucomplex,
                           'enable_cooperative_groups': enable_cooperative_groups,
                           'jitify': jitify}

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        _record({'kind': 'raw', 'definition': self.definition,
                 'args': [_describe(a) if not isinstance(a, int) else
                          {'kind': 'scalar', 'dtype': 'int'} for a in args]})


def memoize(for_each_device=False):
    def decorator(f):
        memo = {}

        def call(*args, **kwargs):
            key = (args, tuple(sorted(kwargs.items())))
            if key not in memo:
                memo[key] = f(*args, **kwargs)
            return memo[key]
        call.__name__ = f.__name__
        call.__wrapped__ = f
        return call
    return decorator


def _unsupported(name):
    def fail(*args, **kwargs):
        raise NotImplementedError(
            'meta-CuPy does not model {} (its kernels could not be recorded)'.format(name))
    return fail


# ---------------------------------------------------------------- cupy.cuda

class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = 0

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Stream.null = Stream(null=True)


class Event:
    """A CUDA event: on meta-CuPy the host clock when it was recorded."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, stop):
    """``cupy.cuda.get_elapsed_time``: milliseconds between two recorded events."""
    return 1000.0 * (stop.time - start.time)


class _MemoryPool:
    def free_all_blocks(self, stream=None):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def malloc(self, size):
        return alloc(size)


def _nccl_module():
    """A one-rank NCCL: allReduce copies, bcast does nothing."""
    nccl = types.ModuleType('cupy.cuda.nccl')
    nccl.available = True
    nccl.NCCL_SUM = 0
    for name, value in NCCL_TYPES.items():
        setattr(nccl, 'NCCL_' + name.upper(), value)
    nccl.NCCL_FLOAT = nccl.NCCL_FLOAT32
    nccl.NCCL_HALF = nccl.NCCL_FLOAT16
    sizes = {v: numpy.dtype(k).itemsize for k, v in NCCL_TYPES.items()}

    class NcclError(RuntimeError):
        pass

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            if ndev != 1:
                raise NcclError('meta-CuPy NCCL runs one rank, not {}'.format(ndev))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            if sendbuf != recvbuf:
                ctypes.memmove(recvbuf, sendbuf, count * sizes[datatype])

        def bcast(self, buff, count, datatype, root, stream):
            pass

        def destroy(self):
            pass

    nccl.NcclError = NcclError
    nccl.NcclCommunicator = NcclCommunicator
    nccl.get_build_version = lambda: 22501
    nccl.get_version = lambda: 22501
    nccl.get_unique_id = lambda: (0,) * 128
    return nccl


def install():
    """Put meta-CuPy in sys.modules as cupy, cupy.cuda, cupyx, ...; before Chainer."""
    if 'chainer' in sys.modules:
        raise RuntimeError('meta-CuPy must be installed before chainer is imported')
    me = sys.modules[__name__]
    cupy = types.ModuleType('cupy')
    cupy.__version__ = '13.6.0'
    cupy.__path__ = []          # a package, so that `import cupy.cuda` works
    for name in ('ndarray', 'asarray', 'array', 'asnumpy', 'get_array_module',
                 'ElementwiseKernel', 'ReductionKernel', 'RawKernel', 'memoize'):
        setattr(cupy, name, getattr(me, name))
    cupy.clear_memo = lambda: None
    # Zeros, not garbage: recorded kernels do not fill the arrays they are given.
    cupy.empty = _wrapped(numpy.zeros)
    cupy.empty_like = _wrapped(numpy.zeros_like)
    # Applied at import by Chainer's LSTM; calling a fused function fails.
    cupy.fuse = lambda *args, **kwargs: lambda f: _unsupported('cupy.fuse of ' + f.__name__)
    cupy.RawModule = _unsupported('cupy.RawModule')
    pool = _MemoryPool()
    cupy.get_default_memory_pool = lambda: pool
    cupy.get_default_pinned_memory_pool = lambda: pool

    def routine(name):
        value = getattr(numpy, name)    # AttributeError names what is missing
        if callable(value) and not isinstance(value, type):
            return _wrapped(value)
        return value
    cupy.__getattr__ = routine

    cuda = types.ModuleType('cupy.cuda')
    cuda.__path__ = []
    cuda.Device, cuda.Stream, cuda.Event = Device, Stream, Event
    cuda.MemoryPointer, cuda.alloc = MemoryPointer, alloc
    cuda.get_current_stream = lambda device_id=-1: Stream.null
    cuda.get_elapsed_time = _elapsed_ms
    cuda.set_allocator = lambda allocator=None: None
    cuda.alloc_pinned_memory = _unsupported('cupy.cuda.alloc_pinned_memory')
    runtime = types.ModuleType('cupy.cuda.runtime')
    runtime.getDeviceCount = lambda: 1
    runtime.getDevice = lambda: 0
    runtime.runtimeGetVersion = lambda: 12090
    runtime.driverGetVersion = lambda: 12090
    runtime.deviceSynchronize = lambda: None
    runtime.is_hip = False
    runtime.getDeviceProperties = lambda device: {
        'name': b'meta-CuPy device', 'pciDomainID': 0, 'pciBusID': 0, 'pciDeviceID': 0,
        'major': 9, 'minor': 0, 'totalGlobalMem': 80 * 2 ** 30}
    memory = types.ModuleType('cupy.cuda.memory')
    memory.MemoryPointer, memory.alloc = MemoryPointer, alloc
    cuda.runtime, cuda.memory = runtime, memory
    cuda.cublas = types.ModuleType('cupy.cuda.cublas')
    cuda.nccl = _nccl_module()
    cupy.cuda = cuda

    util = types.ModuleType('cupy._util')

    class PerformanceWarning(RuntimeWarning):
        pass
    util.PerformanceWarning = PerformanceWarning
    util.memoize = memoize

    cupyx = types.ModuleType('cupyx')
    cupyx.__path__ = []
    scipy = types.ModuleType('cupyx.scipy')
    scipy.__path__ = []
    scipy.linalg = types.ModuleType('cupyx.scipy.linalg')
    scipy.special = types.ModuleType('cupyx.scipy.special')
    cupyx.scipy = scipy
    # CuPy's own ufunc (its kernel is CuPy's, not recorded).
    cupyx.rsqrt = _wrapped(lambda x, out=None, dtype=None: numpy.divide(
        1, numpy.sqrt(x, dtype=dtype), out=out, dtype=dtype))
    cupy._util = util
    sys.modules.update({
        'cupy': cupy, 'cupy.cuda': cuda, 'cupy.cuda.runtime': runtime,
        'cupy.cuda.memory': memory, 'cupy.cuda.cublas': cuda.cublas,
        'cupy.cuda.nccl': cuda.nccl, 'cupy._util': util, 'cupyx': cupyx,
        'cupyx.scipy': scipy, 'cupyx.scipy.linalg': scipy.linalg,
        'cupyx.scipy.special': scipy.special,
        # No cuDNN: Chainer takes its own kernels (im2col, pooling, BN).
        'cupy.cudnn': None, 'cupy.cuda.cudnn': None,
    })
    return cupy
