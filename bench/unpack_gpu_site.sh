#!/usr/bin/env bash
# On the GPU machine: join the parts bench/stage_gpu_site.sh made (moved to /tmp/gw by the calls) into /tmp/site.
# Python's lzma, not the xz binary, so it needs nothing but the machine's python3.
set -euo pipefail
mkdir -p /tmp/site
cat /tmp/gw/p* | python3 -c "
import lzma, sys, tarfile
with tarfile.open(fileobj=lzma.open(sys.stdin.buffer), mode='r|') as archive:
    archive.extractall('/tmp/site', filter='fully_trusted')
"
echo "unpacked $(du -sh /tmp/site | cut -f1) into /tmp/site"
