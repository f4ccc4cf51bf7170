#!/usr/bin/env bash
# CI: an MPI and mpi4py in the active (CI) venv, for tests/distributed.
# PyPI's mpich wheel ships libmpi and mpiexec; mpi4py's wheel runs on it. Without
# those wheels (another platform), fall back to Debian's MPICH and build mpi4py on it.
set -euo pipefail
if ! python -m pip install -q mpich mpi4py; then
  echo "ci/mpi: no PyPI wheels; using Debian's mpich"
  apt-get update -qq && apt-get install -y -qq mpich libmpich-dev
  python -m pip install -q --no-binary mpi4py mpi4py
fi
python -c "from mpi4py import MPI; print('ci/mpi:', MPI.Get_library_version().splitlines()[0])"
mpiexec="$(dirname "$(command -v python)")/mpiexec"
[ -x "$mpiexec" ] || mpiexec=mpiexec
timeout 60 "$mpiexec" -n 2 python -c \
  "from mpi4py import MPI; c = MPI.COMM_WORLD; assert c.allreduce(1) == c.Get_size() == 2"
echo "ci/mpi: mpiexec -n 2 works"
