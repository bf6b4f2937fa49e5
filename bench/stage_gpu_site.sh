#!/usr/bin/env bash
# Stage what the lent GPU machine lacks (DALI and its needs, pytorch_wavelets, PyWavelets) as ONE xz-compressed
# tar of an installed site folder, cut into parts that each fit a device call beside the working tree. Run from
# the project root. The wheels are those ../shared/device/stage-gpu-wheels.sh downloads (its cache is reused).
# Installed and xz'd they travel in 3 parts instead of the wheels' 6, and the GPU machine only unpacks them.
#
# Then make these device calls back to back (the machine stays warm about 30 s between calls):
#   carry [".gpuwheels/p0"]   command: mkdir -p /tmp/gw && mv .gpuwheels/p* /tmp/gw/ && <checks that need no DALI>
#   carry [".gpuwheels/p1"]   command: mv .gpuwheels/p* /tmp/gw/
#   carry [".gpuwheels/p2"]   command: mv .gpuwheels/p* /tmp/gw/ && bash bench/unpack_gpu_site.sh && <checks>
# The first call can run bench/gpu_wavemix.sh if it also carries ".whl" with the wavelet wheels (4.5 MB; p0 and
# the working tree leave room for them under the 64 MiB a call carries); the last can run gpu_loaders.sh or
# gpu_throughput.sh (bench/gpu_setup.sh puts /tmp/site on the path).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cache=${STAGE_CACHE:-/tmp/gpuwheels-cache}
site=${STAGE_SITE:-/tmp/gpu-site}
ls "$cache"/nvidia_dali_cuda130-*.whl >/dev/null 2>&1 || bash "$root/../shared/device/stage-gpu-wheels.sh" >/dev/null
rm -rf "$site"
python3 -m pip install -q --no-deps --no-compile --ignore-requires-python --no-index --target "$site" \
  --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "$cache"/*.whl
# what the machine's Python 3.12 never loads: other Pythons' extension modules, C headers, command-line tools, tests
find "$site" \( -name '*.cpython-3*-x86_64-linux-gnu.so' ! -name '*.cpython-312-*' \) -delete
rm -rf "$site"/nvidia/*/include "$site"/nvidia/libnvcomp/bin "$site"/nvidia/nvimgcodec/tools "$site"/pywt/tests
rm -rf "$root/.gpuwheels" && mkdir -p "$root/.gpuwheels"
tar -C "$site" -cf - . | xz -T0 -6 | split -b 60000000 -d -a 1 - "$root/.gpuwheels/p"
grep -qx '/.gpuwheels/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpuwheels/' >> "$root/.git/info/exclude"
ls -la "$root/.gpuwheels/"
