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

KMOD_STEPPPS_BUILD = $(QUANTUM_CACHE)/kmod/steppps
KMOD_STEPPPS_SOURCES = Kbuild Makefile steppps.rs

.PHONY: kernel kmod test-kmod

kernel:
	bash kernel/build.sh

kmod: kernel
	mkdir -p $(KMOD_STEPPPS_BUILD)
	cd kmod/steppps && cp -p $(KMOD_STEPPPS_SOURCES) $(KMOD_STEPPPS_BUILD)/
	$(MAKE) -C $(KMOD_STEPPPS_BUILD) KDIR="$$(bash kernel/build.sh print-dir)/linux"

test-kmod: deps kmod
	bash kmod/steppps/test/run.sh "$$(bash kernel/build.sh print-dir)" $(KMOD_STEPPPS_BUILD)/steppps.ko
