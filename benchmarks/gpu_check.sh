#!/usr/bin/env bash
# GPU check: ONE report of everything in this project that needs a GPU.
#   What:      the gpu-marked tests (pytest -m gpu tests); a Chainer + CuPy ResNet-50
#              training step at 224x224, batch 32, fp32, with cuDNN (where CuPy has it)
#              and without; the same step in PyTorch (when torch is importable); the
#              ChainerMN pure_nccl fp16 allreduce at world size 1.
#   Resources: one CUDA GPU; Python with NumPy 1 or 2 and CuPy 13 (cuDNN) or 14 (no
#              cuDNN), optionally PyTorch; no internet: chainer, pytest, Pillow and MPI
#              come from wheelhouse/ (`make wheelhouse` where PyPI is reachable, then
#              copy). Without a fitting MPI everything but the allreduce item still runs.
#   Time:      at most about 8 minutes from a fresh copy of the tree: each item has a
#              time limit and the whole run a deadline (GPU_CHECK_DEADLINE_S, 470 s).
# Usage:
#   bash benchmarks/gpu_check.sh            # on the GPU machine (make gpu-check)
#   bash benchmarks/gpu_check.sh --dry-run  # CPU-only machine: everything that needs no
#                                           # GPU, GPU items SKIP, exits 0
#                                           # (also GPU_CHECK_DRY_RUN=1)
# Environment: GPU_CHECK_PYTHON (default python3: the machine's Python with CuPy/torch),
#   GPU_CHECK_WHEELHOUSE (default <tree>/wheelhouse), GPU_CHECK_KEEP=1 keeps the venv.
# The venv is made with --system-site-packages and sees GPU_CHECK_PYTHON's own
# site-packages too (that Python may itself be a venv), so the machine's NumPy, CuPy
# and PyTorch are the ones used; the tree's chainer_resnet comes from PYTHONPATH.
# Exit status: 0 nothing failed (always, in a dry run); 1 an item failed; 2 no GPU.

set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done
[ "$DRY_RUN" = 0 ] || DRY_RUN=1
PY=${GPU_CHECK_PYTHON:-python3}
WHEELHOUSE=${GPU_CHECK_WHEELHOUSE:-$ROOT/wheelhouse}
STEP="$ROOT/benchmarks/gpu_step.py"
START=$SECONDS
DEADLINE=$((START + ${GPU_CHECK_DEADLINE_S:-470}))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
LOGS="$WORK/logs"
ENV_DIR="$WORK/env"
mkdir -p "$LOGS"
trap '[ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$ENV_DIR"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PIP_NO_INPUT=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$ROOT" || exit 2

NAMES=() STATUSES=() DETAILS=() FAILED_LOGS=()
add() {  # add NAME STATUS DETAIL [LOG]
    NAMES+=("$1") STATUSES+=("$2") DETAILS+=("$3")
    if [ "$2" = FAIL ] && [ -n "${4:-}" ]; then FAILED_LOGS+=("$1|$4"); fi
    printf 'gpu_check: [%3d s] %-4s %s\n' "$((SECONDS - START))" "$2" "$1"
}
say() { printf '%s\n' "$*"; }

# limited SECONDS LOG COMMAND...: run with a time limit, no more than the deadline allows.
limited() {
    local want=$1 log=$2 left
    shift 2
    left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$want" ] && want=$left
    if [ "$want" -lt 10 ]; then
        echo "not run: the ${GPU_CHECK_DEADLINE_S:-470} s deadline is spent" >"$log"
        return 124
    fi
    timeout -k 10 "$want" "$@" >>"$log" 2>&1
}

# result_of LOG: the RESULT line gpu_step.py printed, without 'RESULT status=X'.
result_of() {
    local line
    line=$(grep '^RESULT ' "$1" | tail -n 1)
    line=${line#RESULT status=}
    printf '%s' "${line#* }"
}

# step NAME SECONDS ARGS...: one gpu_step.py call reported as one item.
step() {
    local name=$1 seconds=$2 log rc detail
    shift 2
    log="$LOGS/$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_').log"
    limited "$seconds" "$log" "$RUNPY" "$STEP" "$@"
    rc=$?
    detail=$(result_of "$log")
    case $rc in
        0) add "$name" OK "$detail" ;;
        3) add "$name" SKIP "$detail" ;;
        124|137) add "$name" FAIL "time limit reached (${seconds} s or the deadline)" "$log" ;;
        *) add "$name" FAIL "${detail:-exit status $rc}" "$log" ;;
    esac
}

# allreduce_item NAME ARGS...: gpu_step.py allreduce under `mpiexec -n 1` where there is
# one (this venv's, the machine Python's, or on PATH), else or if that fails, alone.
allreduce_item() {
    local name=$1 mpiexec="" candidate log
    shift
    if [ -n "$MPI_MISSING" ]; then
        add "$name" FAIL "MPI missing: $MPI_MISSING (ChainerMN needs mpi4py: make wheelhouse WHEELHOUSE_PYTHON=$("$RUNPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') for this Python)" "$LOGS/mpi.log"
        return
    fi
    for candidate in "$(dirname "$RUNPY")/mpiexec" "$(dirname "$(command -v "$PY")")/mpiexec" \
            "$(command -v mpiexec || true)"; do
        if [ -x "$candidate" ]; then mpiexec=$candidate; break; fi
    done
    if [ -n "$mpiexec" ]; then
        log="$LOGS/$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_')_mpiexec.log"
        if limited 60 "$log" "$mpiexec" -n 1 "$RUNPY" "$STEP" allreduce "$@"; then
            add "$name" OK "$(result_of "$log") launcher=mpiexec"
            return
        fi
        say "gpu_check: under $mpiexec -n 1 it failed ($(tail -n 1 "$log")); now without"
    fi
    step "$name" 60 allreduce "$@"
}

say "gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -n); tree $ROOT"
say "gpu_check: mode: $([ "$DRY_RUN" = 1 ] && echo 'dry run (no GPU needed)' || echo GPU)"
say "gpu_check: logs in $LOGS"

# make_env: the venv, over $RUNPY (--without-pip: pip comes from its site-packages),
# with chainer and pytest from the wheelhouse, and Pillow where the machine lacks it.
make_env() {
    local env_log="$LOGS/env.log" parents purelib dir wanted=(chainer==7.8.1 pytest)
    limited 120 "$env_log" "$RUNPY" -m venv --system-site-packages --without-pip \
        "$ENV_DIR" || return 1
    parents=$("$RUNPY" -c 'import site; print("\n".join(site.getsitepackages()))') || return 1
    purelib=$("$ENV_DIR/bin/python" -c \
        'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    # The parent's site-packages go last on sys.path (their .pth files processed),
    # so what the wheelhouse installs here takes precedence.
    while IFS= read -r dir; do
        [ -n "$dir" ] && printf 'import site; site.addsitedir(%s)\n' "'$dir'"
    done <<<"$parents" >"$purelib/_gpu_check_parent.pth"
    "$ENV_DIR/bin/python" -m pip --version >/dev/null 2>&1 ||
        "$ENV_DIR/bin/python" -m ensurepip --default-pip >>"$env_log" 2>&1 ||
        return 1
    "$ENV_DIR/bin/python" -c 'import PIL' >/dev/null 2>&1 || wanted+=(pillow)
    limited 180 "$env_log" "$ENV_DIR/bin/python" -m pip install --no-index \
        --find-links "$WHEELHOUSE" "${wanted[@]}"
}

# target_env: where no venv can be made, the wheelhouse's chainer (and pytest, Pillow
# where the machine lacks them) into a folder on PYTHONPATH; their other needs are
# the machine's.
target_env() {
    local site="$WORK/site" env_log="$LOGS/env.log" wanted=(chainer==7.8.1)
    "$RUNPY" -c 'import pytest' >/dev/null 2>&1 ||
        wanted+=(pytest iniconfig pluggy packaging pygments)
    "$RUNPY" -c 'import PIL' >/dev/null 2>&1 || wanted+=(pillow)
    limited 180 "$env_log" "$RUNPY" -m pip install --no-index --no-deps \
        --find-links "$WHEELHOUSE" --target "$site" "${wanted[@]}" || return 1
    export PYTHONPATH="$PYTHONPATH:$site"
}

# install_mpi: MPI for ChainerMN, which only the allreduce item needs: the machine's if
# mpi4py imports, else mpi4py and MPICH's runtime from the wheelhouse. A failure leaves
# the environment as it is and sets MPI_MISSING to why (the allreduce item says it).
MPI_MISSING=""
install_mpi() {
    local mpi_log="$LOGS/mpi.log" parent_lib site="$WORK/site"
    # mpi4py looks for libmpi under sys.prefix, which in the venv is the venv: a parent
    # venv's MPI from PyPI (the mpich package puts it in <prefix>/lib) needs the loader path.
    parent_lib="$("$PY" -c 'import sys; print(sys.prefix)' 2>/dev/null)/lib"
    if compgen -G "$parent_lib/libmpi.so*" >/dev/null; then
        export LD_LIBRARY_PATH="$parent_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    "$RUNPY" -c 'from mpi4py import MPI' >>"$mpi_log" 2>&1 && return 0
    if [ "$RUNPY" = "$ENV_DIR/bin/python" ]; then
        limited 120 "$mpi_log" "$RUNPY" -m pip install --no-index \
            --find-links "$WHEELHOUSE" mpi4py mpich
    elif limited 120 "$mpi_log" "$RUNPY" -m pip install --no-index --no-deps \
            --find-links "$WHEELHOUSE" --target "$site" mpi4py; then
        export PYTHONPATH="$PYTHONPATH:$site"
        # MPICH's runtime is data files (lib/, bin/), which --target drops: a prefix.
        if limited 120 "$mpi_log" "$RUNPY" -m pip install --no-index --no-deps \
                --find-links "$WHEELHOUSE" --prefix "$WORK/mpich" mpich; then
            export LD_LIBRARY_PATH="$WORK/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            export PATH="$WORK/mpich/bin:$PATH"
        fi
    fi
    # Judged by the import, not by pip (pip may find mpi4py "installed" and broken).
    if ! "$RUNPY" -c 'from mpi4py import MPI' >>"$mpi_log" 2>&1; then
        # pip's reason if it failed (no wheel for this Python), else the import error.
        MPI_MISSING="$(grep '^ERROR: ' "$mpi_log" | tail -n 1)"
        MPI_MISSING="${MPI_MISSING:-$(grep -v '^ *$' "$mpi_log" | tail -n 1)}"
    fi
}

# ---- 1. The environment: a fresh venv from the wheelhouse, over the machine's Python.
if ! command -v "$PY" >/dev/null 2>&1; then
    add "env" FAIL "no Python '$PY'; set GPU_CHECK_PYTHON"
    RUNPY=""
else
    RUNPY=$(command -v "$PY")
    # Absolute, but not through symbolic links: a venv's python is one.
    RUNPY="$(cd "$(dirname "$RUNPY")" && pwd)/$(basename "$RUNPY")"
    if ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
        add "env" SKIP "wheelhouse missing ($WHEELHOUSE): run 'make wheelhouse' where PyPI is reachable and copy it along; using $RUNPY as it is"
    else
        wheels=("$WHEELHOUSE"/*.whl)
        if make_env; then
            RUNPY="$ENV_DIR/bin/python"
            install_mpi
            add "env" OK "venv over $(command -v "$PY") from the ${#wheels[@]} wheels in $WHEELHOUSE ($(du -sh "$WHEELHOUSE" | cut -f1))${MPI_MISSING:+; MPI missing: $MPI_MISSING}"
        elif target_env; then
            install_mpi
            add "env" OK "no venv ($(grep -v '^ *$' "$LOGS/env.log" | head -n 1)); chainer from the wheelhouse on PYTHONPATH for $RUNPY${MPI_MISSING:+; MPI missing: $MPI_MISSING}"
        else
            add "env" FAIL "venv from the wheelhouse failed; using $RUNPY as it is" \
                "$LOGS/env.log"
        fi
    fi
    stack_log="$LOGS/stack.log"
    if "$RUNPY" - >"$stack_log" 2>&1 <<'EOF'
import platform
import chainer_resnet  # noqa: F401  (its chainer compatibility hook first)
parts = ['Python ' + platform.python_version()]
for name in ('numpy', 'chainer', 'cupy', 'torch', 'mpi4py', 'pytest'):
    try:
        parts.append('{} {}'.format(name, __import__(name).__version__))
    except Exception as exc:
        parts.append('{} absent ({})'.format(name, type(exc).__name__))
try:
    from chainer.backends import cuda
    parts.append('cuDNN in CuPy: {}'.format('yes' if cuda.cudnn_enabled else 'no'))
except Exception as exc:
    parts.append('chainer.backends.cuda: {}'.format(type(exc).__name__))
from chainer_resnet import gpu
if gpu.cupy_major() is not None:
    parts.append('cuDNN {}; NCCL: {}'.format(gpu.cudnn_status()[1], gpu.nccl_status()[1]))
print(', '.join(parts))
EOF
    then add "stack" INFO "$(tail -n 1 "$stack_log")"
    else add "stack" FAIL "$(tail -n 1 "$stack_log")" "$stack_log"
    fi
fi

# ---- 2. Is there a GPU?
NO_GPU=""
if [ "$DRY_RUN" = 1 ]; then
    NO_GPU="dry run"
elif [ -z "$RUNPY" ]; then
    NO_GPU="no Python"
else
    NO_GPU=$("$RUNPY" -c '
import cupy
n = cupy.cuda.runtime.getDeviceCount()
print("" if n > 0 else "CuPy sees no device")' 2>&1 | tail -n 1)
    [ -n "$NO_GPU" ] && NO_GPU="CuPy: $NO_GPU"
fi
if [ -z "$NO_GPU" ] && command -v nvidia-smi >/dev/null 2>&1; then
    add "gpu" INFO "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
fi

# ---- 3. The items.
if [ -z "$NO_GPU" ]; then
    log="$LOGS/pytest_gpu.log"
    limited 120 "$log" "$RUNPY" -m pytest -m gpu tests -q -p no:cacheprovider
    rc=$?
    summary=$(grep -E '(passed|failed|skipped|error|no tests ran)' "$log" | tail -n 1)
    summary=${summary//=/}
    if [ "$rc" = 0 ]; then add "gpu tests (pytest -m gpu tests)" OK "$summary"
    else add "gpu tests (pytest -m gpu tests)" FAIL "${summary:-exit status $rc}" "$log"
    fi
    step "chainer step 224x224 b32 fp32, cuDNN" 100 chainer --device gpu --cudnn auto
    step "chainer step 224x224 b32 fp32, use_cudnn=never" 100 chainer --device gpu --cudnn never
    step "pytorch step 224x224 b32 fp32 (torchvision resnet50, SGD)" 60 torch --device gpu
    allreduce_item "pure_nccl fp16 allreduce, world size 1" --device gpu
    # The trainer's cuDNN options against Chainer's own (benchmarks/README.md, "cuDNN options").
    step "chainer step 224x224 b32 fp32, cuDNN untuned (8 MiB)" 100 \
        chainer --device gpu --cudnn auto --cudnn-autotune off --cudnn-workspace 8
else
    why="no GPU: $NO_GPU"
    for name in "gpu tests (pytest -m gpu tests)" "chainer step 224x224 b32 fp32, cuDNN" \
            "chainer step 224x224 b32 fp32, use_cudnn=never" \
            "pytorch step 224x224 b32 fp32 (torchvision resnet50, SGD)" \
            "pure_nccl fp16 allreduce, world size 1" \
            "chainer step 224x224 b32 fp32, cuDNN untuned (8 MiB)"; do
        add "$name" SKIP "($why)"
    done
    if [ -n "$RUNPY" ]; then
        # The rehearsal: the same code paths on the CPU, small and short.
        log="$LOGS/pytest_gpu_cpu.log"
        limited 90 "$log" "$RUNPY" -m pytest -m gpu tests -q -p no:cacheprovider
        rc=$?
        summary=$(grep -E '(passed|failed|skipped|error|no tests ran)' "$log" | tail -n 1)
        summary=${summary//=/}
        if [ "$rc" = 0 ]; then add "rehearsal: pytest -m gpu tests on CPU" OK "$summary"
        else add "rehearsal: pytest -m gpu tests on CPU" FAIL "${summary:-exit $rc}" "$log"
        fi
        step "rehearsal: chainer step on CPU, 32x32 b32" 90 chainer --device cpu --size 32 \
            --warmup 1 --iters 1
        step "rehearsal: pytorch step on CPU, 32x32 b32" 60 torch --device cpu --size 32 \
            --warmup 1 --iters 1
        allreduce_item "rehearsal: naive allreduce on CPU, world size 1" --device cpu --size 32
    fi
fi

# ---- 4. The report.
ok=0 skip=0 fail=0
say ""
say "==== chainer_resnet GPU check: report ===="
say "date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(uname -n); mode: $([ "$DRY_RUN" = 1 ] && echo 'dry run' || echo GPU)"
if [ -d "$ROOT/.git" ] && command -v git >/dev/null 2>&1; then
    say "tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
fi
for i in "${!NAMES[@]}"; do
    printf '%-4s  %-58s  %s\n' "${STATUSES[$i]}" "${NAMES[$i]}" "${DETAILS[$i]}"
    case ${STATUSES[$i]} in
        OK) ok=$((ok + 1)) ;; SKIP) skip=$((skip + 1)) ;; FAIL) fail=$((fail + 1)) ;;
    esac
done
say "total: $ok OK, $skip SKIP, $fail FAIL in $((SECONDS - START)) s"
for entry in "${FAILED_LOGS[@]+"${FAILED_LOGS[@]}"}"; do
    say ""
    say "---- ${entry%%|*}: last lines of ${entry#*|}"
    tail -n 15 "${entry#*|}"
done
say "==== end of report ===="

if [ "$DRY_RUN" = 1 ]; then exit 0; fi
if [ "$fail" -gt 0 ]; then exit 1; fi
if [ -n "$NO_GPU" ]; then exit 2; fi
exit 0
