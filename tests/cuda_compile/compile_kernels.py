"""Compile, with the CuPy a user installs and NVRTC, every kernel capture.py recorded.

Runs in a virtualenv that holds a CuPy wheel and the NVRTC and CUDA-header
wheels, and no GPU. For each recorded launch it builds the kernel source the
way that CuPy version does at a launch (its own code generator, from the
kernel's definition and the argument types, shapes and strides of the
launch), then compiles it through CuPy's own compile path (its header list,
``assemble_cupy_compiler_options``, ``-ftz=true`` and the rest) for each
``--arch``, stopping just before the module would be loaded onto a device.

What CuPy does at a launch and this reproduces (from CuPy 13.6/14.2's
``_kernel.pyx``, ``_reduction.pyx``, ``raw.pyx``): type placeholders bound by
``_decide_params_type``; broadcasting of non-raw arrays; the merging of
contiguous dimensions (``reduce_dims``), which decides each ``CArray``'s
dimension and contiguity; scalars typed by their parameter; for a
``ReductionKernel`` the axis permutation, the ``IndexT`` type and CuPy's
default block size. What it does not: the CUB path a ``ReductionKernel`` with
one input takes where ``nvcc`` is on PATH, and anything that needs a device
(launch configuration, results, memory errors).

Entries with ``control`` are negative controls: the unpatched ChainerMN
kernels, which must fail where CuPy no longer brings in ``cuda_fp16.h`` (14)
and compile where it does (13), so the check is shown able to fail.

    python tests/cuda_compile/compile_kernels.py KERNELS.json --arch 60 --arch 90
"""

import argparse
import collections
import ctypes
import glob
import json
import multiprocessing
import os
import sys
import time

ARG_KIND_NDARRAY, ARG_KIND_INDEXER, ARG_KIND_SCALAR = 1, 2, 3   # cupy/_core/_kernel.pxd


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('kernels', help='the JSON file capture.py wrote')
    p.add_argument('--arch', action='append', required=True,
                   help='compute capability to compile for, e.g. 60 (P100), 90 (H100)')
    p.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                   help='compiler processes (default: one per CPU)')
    return p.parse_args(argv)


def preload_nvrtc():
    """Load the NVRTC of the nvidia-cuda-nvrtc wheel (CuPy 13 looks only on the
    loader path for it; CuPy 14 finds the wheel itself)."""
    for path in sys.path:
        for lib in sorted(glob.glob(os.path.join(path, 'nvidia', 'cuda_nvrtc', 'lib',
                                                 'libnvrtc.so.*'))):
            if 'builtins' not in lib and 'alt' not in lib:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                return lib
    return None


class Compiled(Exception):
    """Raised by the NVRTC hook once a kernel compiled: stops before the module load."""

    def __init__(self, source, options):
        super().__init__('compiled')
        self.source, self.options = source, options


class Compiler:
    """CuPy's compile path with the architecture given, not asked of a device."""

    def __init__(self):
        import cupy.cuda.compiler as compiler
        self.compiler = compiler
        self.arch = None
        arch_options = compiler._get_arch_for_options_for_nvrtc.__wrapped__
        compiler._get_arch = lambda: self.arch
        compiler._get_arch_for_options_for_nvrtc = (
            lambda arch=None: arch_options(arch or self.arch))
        # CuPy 13 calls compile_using_nvrtc, CuPy 14 _compile_using_nvrtc_no_warning.
        for name in ('compile_using_nvrtc', '_compile_using_nvrtc_no_warning'):
            original = getattr(compiler, name, None)
            if original is not None:
                setattr(compiler, name, self._hook(original))
        os.environ['CUPY_CACHE_IN_MEMORY'] = '1'     # always compile: no disk cache

    @staticmethod
    def _hook(original):
        def compile_then_stop(source, options=(), *args, **kwargs):
            original(source, options, *args, **kwargs)
            raise Compiled(source, options)
        return compile_then_stop

    def compile(self, arch, build):
        """Run ``build()`` (CuPy's generator and compile call) for ``arch``:
        (True, options) or (False, NVRTC's message)."""
        self.arch = str(arch)
        try:
            build()
        except Compiled as done:
            return True, done.options
        except self.compiler.CompileException as e:
            return False, e.get_message() if hasattr(e, 'get_message') else str(e)
        return False, 'CuPy returned without compiling (a cached module?)'


# ---------------------------------------------------------------- CuPy's launch logic

def _c_contiguous(shape, strides, itemsize):
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim == 1:
            continue
        if stride != expected:
            return False
        expected *= dim
    return True


class Array:
    """The shape and strides of one ndarray argument, as CuPy's launch sees them."""

    def __init__(self, desc):
        import numpy
        self.dtype = numpy.dtype(desc['dtype'])
        self.shape = list(desc['shape'])
        self.strides = list(desc['strides'])

    @property
    def c_contiguous(self):
        return _c_contiguous(self.shape, self.strides, self.dtype.itemsize)

    def broadcast_to(self, shape):
        lead = len(shape) - len(self.shape)
        strides = [0] * lead + [0 if d == 1 and s != 1 else st for d, s, st in
                                zip(self.shape, shape[lead:], self.strides)]
        self.shape, self.strides = list(shape), strides

    def arginfo(self, kernel):
        import cupy
        return kernel._ArgInfo(ARG_KIND_NDARRAY, cupy.ndarray, self.dtype.type,
                               len(self.shape), self.c_contiguous, True)


def reduce_dims(arrays, raw, shape):
    """CuPy's ``_reduce_dims``/``_reduced_view_core``: merge contiguous axes of
    the non-raw arrays (in place); returns the new shape."""
    shape = list(shape)
    ndim = len(shape)
    if ndim <= 1:
        return shape
    indexes = [i for i, a in enumerate(arrays) if a is not None and not raw[i]]
    if not indexes:
        return shape
    strided = [i for i in indexes if not arrays[i].c_contiguous]
    if strided and ndim == 2:
        return shape
    if not strided:
        size = 1
        for d in shape:
            size *= d
        for i in indexes:
            arrays[i].shape, arrays[i].strides = [size], [arrays[i].dtype.itemsize]
        return [size]
    vecshape, axes, last = list(shape), [], -1
    for ax in range(ndim):
        if vecshape[ax] == 1:
            continue
        if last < 0:
            last = ax
            continue
        if any(arrays[i].strides[ax] * vecshape[ax] != arrays[i].strides[last]
               for i in strided):
            axes.append(last)
        else:
            vecshape[ax] *= vecshape[last]
        last = ax
    if last >= 0:
        axes.append(last)
    if len(axes) == ndim:
        return shape
    for i in indexes:
        arrays[i].strides = [arrays[i].strides[ax] for ax in axes]
        arrays[i].shape = [vecshape[ax] for ax in axes]
    return [vecshape[ax] for ax in axes]


def _broadcast(arrays, raw):
    import numpy
    shapes = [a.shape for i, a in enumerate(arrays) if a is not None and not raw[i]]
    shape = list(numpy.broadcast_shapes(*[tuple(s) for s in shapes])) if shapes else []
    for i, a in enumerate(arrays):
        if a is not None and not raw[i]:
            a.broadcast_to(shape)
    return shape


def _scalar_info(kernel, dtype):
    import numpy
    from cupy._core import _scalar
    return kernel._ArgInfo(ARG_KIND_SCALAR, _scalar.CScalar, numpy.dtype(dtype).type,
                           0, True, True)


def _indexer_info(kernel, shape):
    from cupy._core import _carray
    return kernel._ArgInfo(ARG_KIND_INDEXER, _carray.Indexer, None, len(shape), True, True)


def elementwise_build(record):
    """(source, options), and a function that compiles one ElementwiseKernel launch."""
    import cupy
    from cupy._core import _kernel, core
    d = record['definition']
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d['kwargs'].items()}
    ek = cupy.ElementwiseKernel(d['in_params'], d['out_params'], d['operation'], d['name'],
                                reduce_dims=d['reduce_dims'], preamble=d['preamble'],
                                **kwargs)
    params = ek.in_params + ek.out_params
    raw = [p.raw for p in params]
    arrays = [Array(a) if a['kind'] == 'ndarray' else None for a in record['args']]
    nin = len(ek.in_params)
    in_types = tuple(a.dtype.type if a is not None else None for a in arrays[:nin])
    out_types = (tuple(a.dtype.type for a in arrays[nin:])
                 if record.get('outputs_given', True) else ())
    resolved_in, _, type_map = ek._decide_params_type(in_types, out_types)
    shape = _broadcast(arrays, raw)
    if record.get('size', -1) != -1:
        shape = [record['size']]
    if ek.reduce_dims:
        shape = reduce_dims(arrays, raw, shape)
    infos = [a.arginfo(_kernel) if a is not None else _scalar_info(_kernel, resolved_in[i])
             for i, a in enumerate(arrays)]
    infos.append(_indexer_info(_kernel, shape))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, ek.params, ek.operation, ek.name, ek.preamble, **ek.kwargs)
    options = ek.kwargs.get('options', ())
    return (code, options), lambda: core.compile_with_cache(code, options)


def reduction_build(record):
    """(source, options), and a function that compiles one ReductionKernel launch (no CUB)."""
    import cupy
    from cupy._core import _kernel, _reduction, core
    d = record['definition']
    rk = cupy.ReductionKernel(d['in_params'], d['out_params'], d['map_expr'],
                              d['reduce_expr'], d['post_map_expr'], d['identity'],
                              d['name'], reduce_type=d['reduce_type'],
                              reduce_dims=d['reduce_dims'], preamble=d['preamble'],
                              options=tuple(d['options']))
    nin = rk.nin
    arrays = [Array(a) if a['kind'] == 'ndarray' else None for a in record['args']]
    in_arrays, out_arrays = arrays[:nin], arrays[nin:]
    in_raw = [p.raw for p in rk.in_params]
    out_raw = [p.raw for p in rk.out_params]
    in_types = tuple(a.dtype.type if a is not None else None for a in in_arrays)
    out_types = (tuple(a.dtype.type for a in out_arrays)
                 if record.get('outputs_given', False) else ())
    resolved_in, _, type_map = _kernel._decide_params_type(
        rk.in_params, rk.out_params, in_types, out_types)
    a_shape = _broadcast(in_arrays, in_raw)
    axis = record['axis']
    reduce_axis, out_axis = _reduction._get_axis(
        tuple(axis) if isinstance(axis, list) else axis, len(a_shape))
    out_shape = list(_reduction._get_out_shape(tuple(a_shape), reduce_axis, out_axis,
                                               record['keepdims']))
    size_in = 1
    for s in a_shape:
        size_in *= s
    size_out = 1
    for s in out_shape:
        size_out *= s
    index_type = ('IndexT', 'int64' if size_in / max(size_out, 1) > 0x7fffffff else 'int32')
    type_map = _kernel._TypeMap(type_map._pairs + (index_type,))
    # _set_permuted_args: non-raw inputs transposed to reduce axes + out axes.
    permutes = list(reduce_axis) + list(out_axis)
    in_shape = [a_shape[ax] for ax in permutes]
    if permutes != list(range(len(a_shape))):
        for i, a in enumerate(in_arrays):
            if a is not None and not in_raw[i]:
                a.shape, a.strides = in_shape[:], [a.strides[ax] for ax in permutes]
    if rk.reduce_dims:
        in_shape = reduce_dims(in_arrays, in_raw, in_shape)
        out_shape = reduce_dims(out_arrays, out_raw, out_shape)
    infos = [a.arginfo(_kernel) if a is not None else _scalar_info(_kernel, resolved_in[i])
             for i, a in enumerate(in_arrays)]
    infos += [a.arginfo(_kernel) for a in out_arrays]
    infos += [_indexer_info(_kernel, in_shape), _indexer_info(_kernel, out_shape),
              _scalar_info(_kernel, 'int32')]
    block_size = _reduction._get_block_specs(1, 1, 1, -1)[0]   # CuPy's default
    code = _reduction._ReductionKernel_get_cached_function_code(
        rk.nin, rk.nout, rk._params, tuple(infos), type_map, rk.name, block_size,
        rk.reduce_type, rk.identity, rk.map_expr, rk.reduce_expr, rk.post_map_expr,
        rk.preamble, rk.options)
    return (code, rk.options), lambda: core.compile_with_cache(code, rk.options)


def raw_build(record):
    """(source, options), and a function that compiles one RawKernel as CuPy does."""
    from cupy._core import raw
    d = record['definition']
    return (d['code'], tuple(d['options'])), lambda: raw._get_raw_module.__wrapped__(
        d['code'], None, tuple(d['options']), d['backend'], d['translate_cucomplex'],
        d['enable_cooperative_groups'], d['jitify'], None, None)


BUILDERS = {'elementwise': elementwise_build, 'reduction': reduction_build,
            'raw': raw_build}


def first_error(message):
    lines = [line.strip() for line in str(message).splitlines() if 'error' in line]
    return (lines[0] if lines else str(message).strip().splitlines()[-1])[:200]


_STATE = None


def _compile_task(task):
    """(ok, detail) of compiling record ``task[0]`` for architecture ``task[1]``."""
    compiler, records = _STATE
    index, arch = task
    _, build = BUILDERS[records[index]['kind']](records[index])
    ok, detail = compiler.compile(arch, build)
    return ok, detail if ok else str(detail)


def main(argv=None):
    args = parse_args(argv)
    nvrtc_lib = preload_nvrtc()
    import cupy
    from cupy.cuda import nvrtc
    with open(args.kernels) as f:
        records = json.load(f)['records']
    major = cupy.__version__.split('.')[0]
    print('compile: CuPy {}, NVRTC {}.{} ({}), architectures sm_{}'.format(
        cupy.__version__, *nvrtc.getVersion(), nvrtc_lib or 'found by CuPy',
        ', sm_'.join(args.arch)))
    compiler = Compiler()
    start = time.time()
    # One compilation per distinct generated source and architecture.
    tasks, seen = [], set()
    for index, record in enumerate(records):
        key, _ = BUILDERS[record['kind']](record)
        if key in seen:
            continue        # another launch with the same generated source
        seen.add(key)
        tasks.extend((index, arch) for arch in args.arch)
    global _STATE
    _STATE = (compiler, records)
    if args.jobs > 1:
        # Forked workers inherit the patched compiler and the records.
        with multiprocessing.get_context('fork').Pool(args.jobs) as pool:
            outcomes = pool.map(_compile_task, tasks, chunksize=1)
    else:
        outcomes = [_compile_task(task) for task in tasks]
    results = collections.OrderedDict()    # (name, control) -> list of outcomes
    failures = []
    for (index, arch), (ok, detail) in zip(tasks, outcomes):
        record = records[index]
        key = (record['definition']['name'], json.dumps(record.get('control')))
        results.setdefault(key, []).append((arch, ok, detail))
    elapsed = time.time() - start
    status = 0
    for (name, control), outcomes in results.items():
        control = json.loads(control)
        by_arch = collections.OrderedDict()
        for arch, ok, detail in outcomes:
            by_arch.setdefault(arch, []).append((ok, detail))
        cells = []
        for arch, runs in by_arch.items():
            bad = [d for ok, d in runs if not ok]
            cells.append('sm_{} {}/{}'.format(arch, len(runs) - len(bad), len(runs)))
            if control is None and bad:
                failures.append('{} on sm_{}: {}'.format(name, arch, first_error(bad[0])))
        if control is None:
            verdict = 'OK' if all(ok for _, ok, _ in outcomes) else 'FAIL'
        else:
            expect = control['expect'].get(major)
            compiled = all(ok for _, ok, _ in outcomes)
            failed_all = not any(ok for _, ok, _ in outcomes)
            verdict = ('OK' if (expect == 'compiles' and compiled) or
                       (expect == 'fails' and failed_all) else 'FAIL')
            cells.append('negative control ({}): expected to {} on CuPy {}: {}'.format(
                control['what'], expect.rstrip('s'), major,
                'it does' if verdict == 'OK' else 'it does not'))
            if verdict == 'FAIL':
                failures.append('negative control {} ({}) did not {}'.format(
                    name, control['what'], expect.rstrip('s')))
            elif expect == 'fails':
                cells.append(first_error(outcomes[0][2]))
        print('{:<5} {:<34} {}'.format(verdict, name, '; '.join(cells)))
    print('compile: {} compilations of {} distinct sources ({} kernels, {} launches) '
          'in {:.0f} s ({} processes)'.format(len(tasks), len(seen), len(results),
                                              len(records), elapsed, args.jobs))
    if failures:
        status = 1
        print('compile: FAIL:', file=sys.stderr)
        for line in failures:
            print('  ' + line, file=sys.stderr)
    return status


if __name__ == '__main__':
    sys.exit(main())
