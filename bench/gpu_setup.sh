# Sourced by the bench/gpu_*.sh scripts on the GPU machine: $out (the device tool's $OUT), the staged packages on
# the path, the project installed, compiled Triton kernels (not the interpreter the CPU tests use).
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
# DALI and the wavelet references staged by bench/stage_gpu_site.sh (unpacked by bench/unpack_gpu_site.sh)
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# or wheels carried in .whl/ (the device tool's README)
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/wheels .whl/*.whl \
    && export PYTHONPATH=/tmp/wheels${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
