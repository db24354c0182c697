#!/bin/sh
# Regenerates vmlinux.h from the running kernel's BTF.
#
# The header is committed rather than generated at build time so that the
# embedded BPF objects (and so the quantumd binary) do not depend on the kernel
# of whichever machine builds the package: CO-RE relocates every field access
# against the target kernel's BTF at load time, so one header serves every
# kernel that has the fields we read. Regenerate only to use new kernel types.
set -eu
here=$(dirname "$0")
btf=${BTF:-/sys/kernel/btf/vmlinux}
[ -r "$btf" ] || { echo "$0: $btf not readable: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF)" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "$0: bpftool not found (apt-get install bpftool)" >&2; exit 1; }
bpftool btf dump file "$btf" format c > "$here/vmlinux.h.tmp"
mv "$here/vmlinux.h.tmp" "$here/vmlinux.h"
echo "wrote $here/vmlinux.h from $btf ($(uname -r))"
