# The QuantumOS kernel (6.12 LTS with Rust) and its Rust kernel modules.
# Included by the top-level Makefile; not yet part of `make test`.
#
#   make kernel      build the kernel (kernel/build.sh; cached by the hash of
#                    config + build script + source and toolchain versions
#                    under $(QUANTUM_CACHE)/kernel, a hit is a no-op)
#   make kmod        build kmod/steppps/steppps.ko against it, in a copy under
#                    $(QUANTUM_CACHE)/kmod/steppps
#   make test-kmod   boot the kernel under QEMU (TCG) with a busybox initramfs,
#                    load steppps, check it against /proc, unload it, check dmesg
#   make test-kernel-vm  boot the test image (make image) on this kernel under
#                    QEMU, systemd as PID 1: multi-user with no failed units,
#                    quantumd, a cell's cgroup limits, BTF and eBPF, then
#                    steppps loaded, read by quantumd, unloaded, dmesg clean
#                    (tests/vm/tests/kernel.rs). Not part of `make test`: a
#                    cold kernel build would not fit CI's time (kernel/README.md)

KMOD_STEPPPS_BUILD = $(QUANTUM_CACHE)/kmod/steppps
KMOD_STEPPPS_SOURCES = Kbuild Makefile steppps.rs

.PHONY: kernel kmod test-kmod test-kernel-vm

kernel:
	bash kernel/build.sh

kmod: kernel
	mkdir -p $(KMOD_STEPPPS_BUILD)
	cd kmod/steppps && cp -p $(KMOD_STEPPPS_SOURCES) $(KMOD_STEPPPS_BUILD)/
	$(MAKE) -C $(KMOD_STEPPPS_BUILD) KDIR="$$(bash kernel/build.sh print-dir)/linux"

test-kmod: deps kmod
	bash kmod/steppps/test/run.sh "$$(bash kernel/build.sh print-dir)" $(KMOD_STEPPPS_BUILD)/steppps.ko

test-kernel-vm: kernel kmod image
	QUANTUM_KERNEL_DIR="$$(bash kernel/build.sh print-dir)" QUANTUM_STEPPPS_KO=$(KMOD_STEPPPS_BUILD)/steppps.ko \
	  $(VM_TEST_ENV) $(CARGO) test -p quantum-vmtest --test kernel
