# VM and container test tier: rootfs, guest image, nspawn and QEMU tests.
# Included by the top-level Makefile. Everything here runs as root.
#
#   make deps         install what the test tiers need (scripts/install-deps.sh)
#   make rootfs       the variant's Debian rootfs (mmdebstrap, cached by hash)
#   make image        release binaries + rootfs + project files -> guest image
#   make test-nspawn  smoke test in a systemd-nspawn container
#   make test-vm      the QEMU tier (TCG): smoke, isolation, the catalog, and
#                     the QuantumOS kernel with its module
#   make vm-run       boot the image under QEMU on this terminal, as `quantum`
#
# QUANTUM_CACHE (default .cache/) is where rootfs and images are kept; point
# it outside the clone (e.g. /var/cache/quantumos) to share it between clones.

VM_VARIANT ?= test-guest
CARGO ?= cargo
VM_BUILD := image-builder/build-rootfs.sh --variant $(VM_VARIANT)
# The tests fail, rather than skip, when the image they were promised is missing.
VM_TEST_ENV := QUANTUM_VMTEST_REQUIRE_IMAGE=1

.PHONY: deps rootfs image release-bins intent-cache test-nspawn test-vm vm-run

deps:
	bash scripts/install-deps.sh

rootfs: deps
	bash $(VM_BUILD) rootfs

release-bins:
	$(CARGO) build --release -p quantumd -p quantumctl -p quantum-cell

# The intent engine's catalog embeddings, computed here (native speed) for
# the image's catalog and model: embedding the catalog inside a TCG guest
# takes minutes. Same model + same manifests = the same cache file names.
intent-cache: release-bins model
	QUANTUM_INTENT_CACHE=$(or $(QUANTUM_CACHE),$(CURDIR)/.cache)/intent \
	  $${CARGO_TARGET_DIR:-target}/release/quantumctl ask --local --json --catalog packaging/cells "warm up the cache" >/dev/null

# The test image boots the QuantumOS kernel (its variant's image.conf says
# KERNEL=quantumos), installed from kernel-debs.
image: deps release-bins model intent-cache kernel-debs
	QUANTUM_KERNEL_DEBS=$(KERNEL_DEBS) bash $(VM_BUILD) image

test-nspawn: image
	$(VM_TEST_ENV) $(CARGO) test -p quantum-vmtest --test nspawn --test systemd_backend

test-vm: image
	$(VM_TEST_ENV) $(CARGO) test -p quantum-vmtest --test qemu --test isolation --test catalog --test kernel

vm-run: image
	$(CARGO) run -q -p quantum-vmtest --bin quantum-vm -- run --variant $(VM_VARIANT)
