#!/bin/bash
# A batch job for tests/test_slurm.py: the job scripts' launch path
# (jobs/common.sh: job_setup's launcher and traps, then launch) with
# tests/slurm/signal_probe.py in place of the trainer, to see SIGUSR1 sent to
# the batch shell (what --signal=B:USR1 does) reach every rank on every node.
# PROBE_LAUNCHER: mpirun (MPIRUN picks hydra or Open MPI) or srun;
# PROBE_DIR: where the ranks say they are ready. Same parameters as the job
# scripts otherwise (RECIPE, DEVICE, GPUS_PER_NODE, VENV, MODULES).
set -euo pipefail
REPO=${SLURM_SUBMIT_DIR:?submit from the repository root}
# shellcheck source=jobs/common.sh
source "$REPO/jobs/common.sh"
job_setup slurm "${PROBE_LAUNCHER:-mpirun}"
launch "${LAUNCH[@]}" "$PYTHON" tests/slurm/signal_probe.py "${PROBE_DIR:?}"
