# The QuantumOS live ISO (issue 9): hybrid BIOS + UEFI, live-boot, squashfs,
# QuantumOS installed from the .debs of `make deb`, with an installer
# (packaging/installer/quantumos-install). Included by the top-level Makefile.
#
#   make iso        build it (image-builder/build-iso.sh, variant iso), cached
#                   by the hash of its inputs under $(QUANTUM_CACHE)/iso/<hash>/
#   make iso-check  build it twice in two fresh temporary directories (the
#                   second from the frozen mirror) and compare sha256
#                   (diffoscope on a mismatch); fails unless the two are
#                   bit-for-bit identical
#   make test-iso   boot it under QEMU (BIOS and UEFI, swtpm), quantumd READY,
#                   a cell serving HTTP, install it onto a blank disk and boot
#                   that disk (tests/vm/tests/iso_boot.rs)
#   make test-iso-desktop
#                   build the ISO of variant iso-desktop and boot it under QEMU
#                   (BIOS, swtpm): quantumd READY, sway as the live user on
#                   tty1 with the assistant's window mapped, a grim screenshot
#                   in target/desktop-screenshots/iso-desktop.png
#                   (tests/vm/tests/iso_desktop.rs)
#
# SOURCE_DATE_EPOCH defaults to the time of the last commit. The Debian
# packages come from a frozen mirror under $(QUANTUM_CACHE)/iso-mirror/ once a
# build has downloaded them (offline from then on);
# QUANTUM_ISO_MIRROR=refresh make iso takes the archive's newest again.

ISO_VARIANT ?= iso
ISO_BUILD := image-builder/build-iso.sh --variant $(ISO_VARIANT)
ISO_DEB_DIR = $(or $(QUANTUM_DEB_DIR),$(or $(QUANTUM_CACHE),$(CURDIR)/.cache)/deb)

.PHONY: iso iso-check test-iso test-iso-desktop

iso: deb
	QUANTUM_DEB_DIR=$(ISO_DEB_DIR) bash $(ISO_BUILD) build

iso-check: deb
	QUANTUM_DEB_DIR=$(ISO_DEB_DIR) bash $(ISO_BUILD) check

test-iso: iso
	QUANTUM_VMTEST_REQUIRE_IMAGE=1 $(CARGO) test -p quantum-vmtest --test iso_boot -- --nocapture

# Not a prerequisite chain through `iso`: ISO_VARIANT may name another variant.
test-iso-desktop: deb
	QUANTUM_DEB_DIR=$(ISO_DEB_DIR) bash image-builder/build-iso.sh --variant iso-desktop build
	QUANTUM_VMTEST_REQUIRE_IMAGE=1 $(CARGO) test -p quantum-vmtest --test iso_desktop -- --nocapture
