# The QuantumOS kernel (6.12 LTS with Rust) and its Rust kernel modules.
# Included by the top-level Makefile. The test image (make image) boots this
# kernel with the module installed, so `make test-vm` tests both.
#
#   make kernel      build the kernel (kernel/build.sh; cached by the hash of
#                    config + build script + source and toolchain versions
#                    under $(QUANTUM_KERNEL_CACHE), a hit is a no-op)
#   make kernel-background  the same, in the background
#   make kmod        build kmod/steppps/steppps.ko against it, in a copy under
#                    $(QUANTUM_CACHE)/kmod/steppps
#   make kernel-debs the kernel, quantumos-kmod and quantumos-kernel packages
#                    in $(KERNEL_DEBS) (kernel/build-debs.sh), which the test
#                    image installs
#   make test-kmod   boot the kernel under QEMU (TCG) with a busybox initramfs,
#                    load steppps, check it against /proc, unload it, check dmesg
#   make test-kernel-vm  only the kernel scenarios of `make test-vm`
#                    (tests/vm/tests/kernel.rs): multi-user with no failed
#                    units, a cell's cgroup limits, BTF and eBPF, steppps
#                    loaded at boot and read by quantumd, unloaded and
#                    reloaded, dmesg clean
#
# QUANTUM_KERNEL_CACHE is where kernel builds are kept (default
# $(QUANTUM_CACHE)/kernel; about 3.2 GB each, two kept). .ci/run points it at
# /var/cache/quantumos/kernel, outside the clone, so that CI on this machine
# builds the kernel once per change of its inputs rather than once per run.

KMOD_STEPPPS_BUILD = $(QUANTUM_CACHE)/kmod/steppps
KMOD_STEPPPS_SOURCES = Kbuild Makefile steppps.rs
KERNEL_DEBS = $(QUANTUM_CACHE)/kernel-debs

.PHONY: kernel kernel-background kmod kernel-debs test-kmod test-kernel-vm

kernel:
	bash kernel/build.sh

# `make test` starts a cold kernel build first, in the background, and goes
# on with the tiers that do not need it, whose idle CPU the build (nice 19)
# fills; `make kernel` then waits for it on kernel/build.sh's lock and finds
# its output. print-dir installs the packages in the foreground: a background
# apt would race later apt runs for dpkg's lock.
kernel-background:
	@dir=$$(bash kernel/build.sh print-dir) && log=$$(dirname "$$dir")/background.log && \
	if [ -f "$$dir/done" ]; then echo "kernel: cache hit: $$dir"; \
	else echo "kernel: building $$dir in the background (log: $$log)"; \
	setsid nohup bash kernel/build.sh >"$$log" 2>&1 </dev/null & fi

kmod: kernel
	mkdir -p $(KMOD_STEPPPS_BUILD)
	cd kmod/steppps && cp -p $(KMOD_STEPPPS_SOURCES) $(KMOD_STEPPPS_BUILD)/
	$(MAKE) -C $(KMOD_STEPPPS_BUILD) KDIR="$$(bash kernel/build.sh print-dir)/linux"

kernel-debs: kmod
	bash kernel/build-debs.sh "$$(bash kernel/build.sh print-dir)" $(KMOD_STEPPPS_BUILD)/steppps.ko $(KERNEL_DEBS)

test-kmod: deps kmod
	bash kmod/steppps/test/run.sh "$$(bash kernel/build.sh print-dir)" $(KMOD_STEPPPS_BUILD)/steppps.ko

test-kernel-vm: image
	$(VM_TEST_ENV) $(CARGO) test -p quantum-vmtest --test kernel
