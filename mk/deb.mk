# Debian packages (debian/): quantumos-daemon, -cli, -cells, -model,
# -provider and the quantumos metapackage. Included by the top-level Makefile.
#
#   make deb          build them (scripts/build-deb.sh) into $(DEB_DIR), then
#                     lintian: errors fail, the rest is in $(DEB_DIR)/lintian.txt
#   make test-deb     deb, then check what the packages hold and declare
#                     (scripts/check-deb.sh)
#   make test-deb-vm  deb, then in QEMU: a plain bookworm guest (variant
#                     deb-guest) installs them with apt, runs a cell, purges
#                     them and must be as before (tests/vm/tests/deb_install.rs)
#
# The build reuses CARGO_TARGET_DIR (the release build of `make image`).
# QUANTUM_DEB_VENDOR=1 builds from vendored crates only (a full rebuild).

DEB_DIR ?= $(or $(QUANTUM_CACHE),$(CURDIR)/.cache)/deb
DEB_VM_VARIANT := deb-guest

.PHONY: deb test-deb deb-image test-deb-vm

deb: deps model
	QUANTUM_DEB_DIR=$(DEB_DIR) bash scripts/build-deb.sh

test-deb: deb
	QUANTUM_DEB_DIR=$(DEB_DIR) bash scripts/check-deb.sh

deb-image: deps
	bash image-builder/build-rootfs.sh --variant $(DEB_VM_VARIANT) image

test-deb-vm: deb deb-image
	QUANTUM_VMTEST_REQUIRE_IMAGE=1 QUANTUM_DEB_DIR=$(DEB_DIR) \
	  $(CARGO) test -p quantum-vmtest --test deb_install
