# Sourced by the gpu_*.sh scripts from the repository root: sets $PY (the Python to run, $PYTHON or
# python3) and, on a machine that lacks rvq's dependencies, installs the wheels that
# benchmarks/gpu_wheels.sh put in .whl/ (carried with the device call) into /tmp/site.
PY="${PYTHON:-python3}"
if [ -d .whl ] && ! "$PY" -c "import webdataset, pydantic, torch_fidelity" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1
