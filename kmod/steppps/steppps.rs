// SPDX-License-Identifier: GPL-2.0

//! STEPPPS kernel-side figures as a character device.
//!
//! `/dev/steppps` is a misc device. Every read returns one text record of
//! `key value` lines with the system-wide figures the module sampled last
//! (load average, online CPUs, memory); `poll()` says the device is readable
//! when the record's `generation` has moved on since this open file last read
//! it. The generation moves when a figure changes in a way quantumd cares
//! about (see [`Figures::sample`]), so a reader can sleep in `poll()` instead
//! of re-reading /proc on a timer. See README.md for the record's format.
//!
//! Design: a kernel timer samples every [`INTERVAL_MS`] and publishes the
//! figures through a sequence counter built from atomics (one writer, the
//! timer; any number of readers that retry when they overlap a write), so
//! neither side takes a lock and softirq context never waits on a reader.
//!
//! 6.12 has safe abstractions for modules, user-space copies and pinned
//! allocation, which are used here; it has none for misc devices, file
//! operations, poll tables or timers. Those live in the `ffi` module below:
//! small, each `unsafe` block with the reason it is sound.

use core::fmt::{self, Write};
use core::pin::Pin;
use core::sync::atomic::{fence, AtomicU64, Ordering};

use kernel::bindings;
use kernel::c_str;
use kernel::error::code::{EINVAL, ENOMEM};
use kernel::ffi::{c_int, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::types::Opaque;
use kernel::uaccess::UserSlice;

module! {
    type: Steppps,
    name: "steppps",
    author: "QuantumOS",
    description: "STEPPPS kernel-side figures at /dev/steppps, pollable for changes",
    license: "GPL",
}

/// How often the timer samples the figures.
const INTERVAL_MS: u32 = 250;

/// The largest record [`render`] produces; a read with a smaller buffer
/// fails with EINVAL rather than returning a torn record.
const RECORD_MAX: usize = 512;

/// Free memory must move by at least total / `MEM_STEP_DIVISOR` since the
/// last generation to start a new one (1/64 of RAM: a real swing, not noise).
const MEM_STEP_DIVISOR: u64 = 64;

/// `FSHIFT` and `FIXED_1` from include/linux/sched/loadavg.h.
const FSHIFT: u32 = 11;
const FIXED_1: u64 = 1 << FSHIFT;

/// One consistent view of the figures, as a reader gets it.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    generation: u64,
    samples: u64,
    sampled_at_ms: u64,
    avenrun: [u64; 3],
    cpus_online: u64,
    mem_total_kb: u64,
    mem_free_kb: u64,
}

/// The published figures. Only the timer writes them; `seq` is odd while it
/// does, and readers retry until they read the same even `seq` before and
/// after (the seqcount pattern, with atomics so that no access is a data race).
struct Figures {
    seq: AtomicU64,
    generation: AtomicU64,
    samples: AtomicU64,
    sampled_at_ms: AtomicU64,
    avenrun: [AtomicU64; 3],
    cpus_online: AtomicU64,
    mem_total_kb: AtomicU64,
    mem_free_kb: AtomicU64,
    /// Free memory when the generation last moved (timer only).
    mem_free_at_generation: AtomicU64,
}

impl Figures {
    const fn new() -> Self {
        Figures {
            seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            sampled_at_ms: AtomicU64::new(0),
            avenrun: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            cpus_online: AtomicU64::new(0),
            mem_total_kb: AtomicU64::new(0),
            mem_free_kb: AtomicU64::new(0),
            mem_free_at_generation: AtomicU64::new(0),
        }
    }

    /// Takes a sample and publishes it. Returns true when the generation
    /// moved: the load average (as /proc/loadavg rounds it), the number of
    /// online CPUs or total memory changed, or free memory moved by
    /// 1/`MEM_STEP_DIVISOR` of total since the last generation.
    ///
    /// Must not run concurrently with itself (the timer callback, and module
    /// init before the timer is armed, are the only callers).
    fn sample(&self) -> bool {
        let now = ffi::read_system();
        let old = self.read();
        let loadavg_moved = (0..3).any(|i| load_centis(now.avenrun[i]) != load_centis(old.avenrun[i]));
        let base = self.mem_free_at_generation.load(Ordering::Relaxed);
        let step = now.mem_total_kb / MEM_STEP_DIVISOR;
        let first = old.samples == 0;
        let moved = first
            || loadavg_moved
            || now.cpus_online != old.cpus_online
            || now.mem_total_kb != old.mem_total_kb
            || now.mem_free_kb.abs_diff(base) >= step;

        // Writer side of the sequence counter: odd while writing.
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        if moved {
            self.generation.store(old.generation + 1, Ordering::Relaxed);
            self.mem_free_at_generation.store(now.mem_free_kb, Ordering::Relaxed);
        }
        self.samples.store(old.samples + 1, Ordering::Relaxed);
        self.sampled_at_ms.store(now.sampled_at_ms, Ordering::Relaxed);
        for (slot, value) in self.avenrun.iter().zip(now.avenrun) {
            slot.store(value, Ordering::Relaxed);
        }
        self.cpus_online.store(now.cpus_online, Ordering::Relaxed);
        self.mem_total_kb.store(now.mem_total_kb, Ordering::Relaxed);
        self.mem_free_kb.store(now.mem_free_kb, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
        moved
    }

    /// Reader side: a consistent snapshot, retried while the timer writes.
    fn read(&self) -> Snapshot {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let snapshot = Snapshot {
                generation: self.generation.load(Ordering::Relaxed),
                samples: self.samples.load(Ordering::Relaxed),
                sampled_at_ms: self.sampled_at_ms.load(Ordering::Relaxed),
                avenrun: [
                    self.avenrun[0].load(Ordering::Relaxed),
                    self.avenrun[1].load(Ordering::Relaxed),
                    self.avenrun[2].load(Ordering::Relaxed),
                ],
                cpus_online: self.cpus_online.load(Ordering::Relaxed),
                mem_total_kb: self.mem_total_kb.load(Ordering::Relaxed),
                mem_free_kb: self.mem_free_kb.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return snapshot;
            }
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// A load average in hundredths, rounded as /proc/loadavg rounds it
/// (`get_avenrun(avnrun, FIXED_1/200, 0)`, then `LOAD_INT`/`LOAD_FRAC`).
fn load_centis(raw: u64) -> u64 {
    let x = raw + FIXED_1 / 200;
    (x >> FSHIFT) * 100 + (((x & (FIXED_1 - 1)) * 100) >> FSHIFT)
}

/// A fixed-size text buffer that `write!` can fill without allocating.
struct Record {
    bytes: [u8; RECORD_MAX],
    len: usize,
}

impl Write for Record {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).filter(|&end| end <= RECORD_MAX).ok_or(fmt::Error)?;
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The record user space reads: one `key value` line per figure.
fn render(s: &Snapshot, out: &mut Record) -> fmt::Result {
    let load = s.avenrun.map(load_centis);
    writeln!(out, "generation {}", s.generation)?;
    writeln!(out, "samples {}", s.samples)?;
    writeln!(out, "interval_ms {}", INTERVAL_MS)?;
    writeln!(out, "sampled_at_ms {}", s.sampled_at_ms)?;
    writeln!(
        out,
        "loadavg {}.{:02} {}.{:02} {}.{:02}",
        load[0] / 100,
        load[0] % 100,
        load[1] / 100,
        load[1] % 100,
        load[2] / 100,
        load[2] % 100
    )?;
    writeln!(out, "cpus_online {}", s.cpus_online)?;
    writeln!(out, "mem_total_kb {}", s.mem_total_kb)?;
    writeln!(out, "mem_free_kb {}", s.mem_free_kb)
}

/// What the module owns: the figures and the kernel objects that must not
/// move once registered (hence pinned on the heap).
#[pin_data]
struct Shared {
    figures: Figures,
    #[pin]
    wait: Opaque<bindings::wait_queue_head>,
    #[pin]
    timer: Opaque<bindings::timer_list>,
    #[pin]
    misc: Opaque<ffi::MiscDevice>,
    fops: Opaque<bindings::file_operations>,
    interval_jiffies: c_ulong,
}

// SAFETY: `Shared` is shared between the timer (softirq), file operations on
// any CPU and module init/exit. `figures` is all atomics; `wait` is a kernel
// wait queue, which has its own lock; `timer`, `misc` and `fops` are written
// only during init (before anything else can see them) and are afterwards
// used only through the kernel's timer and misc APIs, which do their own
// locking.
unsafe impl Sync for Shared {}
// SAFETY: nothing in `Shared` is tied to the thread that created it.
unsafe impl Send for Shared {}

/// The module: `/dev/steppps` is registered and the timer armed for as long
/// as this lives.
struct Steppps {
    shared: Pin<KBox<Shared>>,
}

impl kernel::Module for Steppps {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let interval_jiffies = ffi::msecs_to_jiffies(INTERVAL_MS);
        let shared = KBox::pin_init(
            pin_init!(Shared {
                figures: Figures::new(),
                wait <- ffi::new_wait_queue(),
                timer <- ffi::new_timer(),
                misc: Opaque::uninit(),
                fops: Opaque::uninit(),
                interval_jiffies,
            }),
            GFP_KERNEL,
        )
        .map_err(|_| ENOMEM)?;

        // A first sample before anyone can open the device.
        shared.figures.sample();
        ffi::register(&shared, module)?;
        ffi::arm_timer(&shared);
        pr_info!("/dev/steppps ready (sampling every {} ms)\n", INTERVAL_MS);
        Ok(Steppps { shared })
    }
}

impl Drop for Steppps {
    fn drop(&mut self) {
        // No file can be open here: the device holds a reference on the module
        // while open, so exit runs only after the last release.
        ffi::deregister(&self.shared);
        ffi::stop_timer(&self.shared);
        pr_info!("/dev/steppps removed\n");
    }
}

/// The per-open-file state behind `file->private_data`.
struct OpenFile {
    shared: *const Shared,
    /// The generation this file last read; `u64::MAX` before its first read,
    /// so a fresh open is readable at once.
    seen: AtomicU64,
}

impl OpenFile {
    fn shared(&self) -> &Shared {
        // SAFETY: `shared` points into the module's pinned allocation, which
        // lives until module exit; exit cannot run while a file is open (the
        // open file holds a module reference through `fops.owner`).
        unsafe { &*self.shared }
    }
}

/// The unsafe edge: C structures and callbacks 6.12 has no Rust abstraction
/// for. Everything outside this module is safe code.
mod ffi {
    use super::*;

    /// `struct miscdevice` from include/linux/miscdevice.h, which 6.12's
    /// bindings do not include. Field order and types match the C definition.
    #[repr(C)]
    pub(super) struct MiscDevice {
        minor: c_int,
        name: *const kernel::ffi::c_char,
        fops: *const bindings::file_operations,
        list: bindings::list_head,
        parent: *mut bindings::device,
        this_device: *mut bindings::device,
        groups: *mut *const bindings::attribute_group,
        nodename: *const kernel::ffi::c_char,
        mode: bindings::umode_t,
    }

    /// `struct poll_table_struct` from include/linux/poll.h, opaque in the
    /// bindings; `poll_wait()` is an inline that calls `_qproc`.
    #[repr(C)]
    struct PollTable {
        qproc: Option<
            unsafe extern "C" fn(*mut bindings::file, *mut bindings::wait_queue_head, *mut PollTable),
        >,
        key: c_uint,
    }

    // `MiscDevice` points to C structs whose bindings hold zero-sized members
    // (lockdep is off), which the lint flags; only C ever looks inside them.
    #[allow(improper_ctypes)]
    extern "C" {
        fn misc_register(misc: *mut MiscDevice) -> c_int;
        fn misc_deregister(misc: *mut MiscDevice);
        /// The load average, exported by kernel/sched/loadavg.c.
        static avenrun: [c_ulong; 3];
    }

    const MISC_DYNAMIC_MINOR: c_int = 255;
    const TASK_NORMAL: c_uint = 3; // TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE
    const EPOLLIN: c_uint = 0x1;
    const EPOLLRDNORM: c_uint = 0x40;

    /// The current figures, straight from the kernel.
    pub(super) fn read_system() -> Snapshot {
        let mut info = core::mem::MaybeUninit::<bindings::sysinfo>::zeroed();
        // SAFETY: `si_meminfo` fills the fields it owns of a valid `sysinfo`.
        // A zeroed `sysinfo` is valid (plain integers).
        let info = unsafe {
            bindings::si_meminfo(info.as_mut_ptr());
            info.assume_init()
        };
        let unit_kb = u64::from(info.mem_unit) / 1024;
        let mut loads = [0u64; 3];
        for (i, load) in loads.iter_mut().enumerate() {
            // SAFETY: `avenrun` is a static array of three words that the
            // scheduler tick updates in place; the kernel's own readers
            // (get_avenrun) read it without a lock, word by word, as here.
            *load = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(avenrun[i])) } as u64;
        }
        // SAFETY: `__num_online_cpus` is an `atomic_t`; `num_online_cpus()`
        // is a plain (`READ_ONCE`) read of its counter.
        let cpus = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(bindings::__num_online_cpus.counter))
        };
        // SAFETY: `ktime_get_with_offset` may be called from any context.
        let boot_ns = unsafe { bindings::ktime_get_with_offset(bindings::tk_offsets_TK_OFFS_BOOT) };
        Snapshot {
            sampled_at_ms: (boot_ns / 1_000_000) as u64,
            avenrun: loads,
            cpus_online: cpus as u64,
            mem_total_kb: info.totalram as u64 * unit_kb,
            mem_free_kb: info.freeram as u64 * unit_kb,
            ..Snapshot::default()
        }
    }

    /// The C pointer behind a static lock class key (6.12 keeps
    /// `LockClassKey::as_ptr` private to the kernel crate).
    fn lock_class(key: &'static kernel::sync::LockClassKey) -> *mut bindings::lock_class_key {
        // `LockClassKey` is `repr(transparent)` over `Opaque<lock_class_key>`,
        // itself transparent over the C struct, which lockdep updates with
        // its own synchronisation.
        (key as *const kernel::sync::LockClassKey).cast_mut().cast()
    }

    pub(super) fn msecs_to_jiffies(ms: u32) -> c_ulong {
        // SAFETY: a pure conversion.
        unsafe { bindings::__msecs_to_jiffies(ms) }
    }

    pub(super) fn new_wait_queue() -> impl PinInit<Opaque<bindings::wait_queue_head>> {
        Opaque::ffi_init(|wq| {
            // SAFETY: `wq` is valid, pinned memory for a wait queue head; the
            // name and the lock class key are statics.
            unsafe {
                bindings::__init_waitqueue_head(
                    wq,
                    c_str!("steppps_wait").as_char_ptr(),
                    lock_class(kernel::static_lock_class!()),
                )
            }
        })
    }

    pub(super) fn new_timer() -> impl PinInit<Opaque<bindings::timer_list>> {
        Opaque::ffi_init(|timer| {
            // SAFETY: `timer` is valid, pinned memory for a timer; this is
            // what `timer_setup(timer, tick, 0)` expands to.
            unsafe {
                bindings::init_timer_key(
                    timer,
                    Some(tick),
                    0,
                    c_str!("steppps_timer").as_char_ptr(),
                    lock_class(kernel::static_lock_class!()),
                )
            }
        })
    }

    pub(super) fn arm_timer(shared: &Shared) {
        // SAFETY: the timer was initialised by `new_timer` and is pinned.
        unsafe {
            let now = core::ptr::read_volatile(core::ptr::addr_of!(bindings::jiffies));
            bindings::mod_timer(shared.timer.get(), now + shared.interval_jiffies);
        }
    }

    pub(super) fn stop_timer(shared: &Shared) {
        // SAFETY: the timer was initialised; `timer_shutdown_sync` waits for a
        // running callback and stops it from re-arming itself.
        unsafe { bindings::timer_shutdown_sync(shared.timer.get()) };
    }

    /// The timer callback (softirq): sample, wake pollers on a new
    /// generation, re-arm.
    unsafe extern "C" fn tick(timer: *mut bindings::timer_list) {
        // SAFETY: the only timer using this callback is `Shared::timer`, so
        // `timer` points into a live `Shared` (the module stops the timer
        // before freeing it). `Opaque` is transparent over `timer_list`.
        let shared = unsafe { &*kernel::container_of!(timer.cast::<Opaque<bindings::timer_list>>(), Shared, timer) };
        if shared.figures.sample() {
            // SAFETY: the wait queue head was initialised and lives as long
            // as `shared`; waking is allowed from softirq context.
            unsafe { bindings::__wake_up(shared.wait.get(), TASK_NORMAL, 0, core::ptr::null_mut()) };
        }
        arm_timer(shared);
    }

    pub(super) fn register(shared: &Pin<KBox<Shared>>, module: &'static ThisModule) -> Result {
        // SAFETY: `fops` and `misc` are not yet visible to the kernel, so
        // writing them is exclusive; both live, pinned, until module exit,
        // which deregisters the device first.
        unsafe {
            let mut fops: bindings::file_operations = core::mem::zeroed();
            fops.owner = module.as_ptr();
            fops.open = Some(open);
            fops.release = Some(release);
            fops.read = Some(read);
            fops.poll = Some(poll);
            fops.llseek = Some(bindings::default_llseek);
            shared.fops.get().write(fops);

            let mut misc: MiscDevice = core::mem::zeroed();
            misc.minor = MISC_DYNAMIC_MINOR;
            misc.name = c_str!("steppps").as_char_ptr();
            misc.fops = shared.fops.get();
            misc.mode = 0o444;
            shared.misc.get().write(misc);
            kernel::error::to_result(misc_register(shared.misc.get()))
        }
    }

    pub(super) fn deregister(shared: &Shared) {
        // SAFETY: the device was registered by `register`.
        unsafe { misc_deregister(shared.misc.get()) };
    }

    /// `open`: misc_open() has put the `miscdevice` in `private_data`;
    /// replace it with this file's own state.
    unsafe extern "C" fn open(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
        // SAFETY: `file` is valid for the duration of open; misc_open() set
        // `private_data` to our `MiscDevice`, the `misc` field of a `Shared`.
        let shared = unsafe {
            let misc = (*file).private_data.cast::<Opaque<MiscDevice>>();
            kernel::container_of!(misc, Shared, misc)
        };
        let state = OpenFile { shared, seen: AtomicU64::new(u64::MAX) };
        match KBox::new(state, GFP_KERNEL) {
            Ok(state) => {
                // SAFETY: as above; `release` takes the box back.
                unsafe { (*file).private_data = KBox::into_raw(state).cast() };
                0
            }
            Err(_) => ENOMEM.to_errno(),
        }
    }

    unsafe extern "C" fn release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
        // SAFETY: `private_data` holds the box `open` leaked; release is the
        // last call for this file.
        drop(unsafe { KBox::from_raw((*file).private_data.cast::<OpenFile>()) });
        0
    }

    /// # Safety
    /// `file` must be a file opened by `open` (its `private_data` an
    /// `OpenFile`), valid for the returned lifetime.
    unsafe fn open_file<'a>(file: *mut bindings::file) -> &'a OpenFile {
        // SAFETY: the caller's promise.
        unsafe { &*(*file).private_data.cast::<OpenFile>() }
    }

    /// `read`: the whole record at offset 0, end of file after it.
    unsafe extern "C" fn read(
        file: *mut bindings::file,
        buf: *mut kernel::ffi::c_char,
        len: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: called by the VFS on a file opened by `open`.
        let state = unsafe { open_file(file) };
        // SAFETY: `ppos` is valid for the duration of the call.
        let pos = unsafe { &mut *ppos };
        if *pos != 0 {
            return 0;
        }
        let snapshot = state.shared().figures.read();
        let mut record = Record { bytes: [0; RECORD_MAX], len: 0 };
        if render(&snapshot, &mut record).is_err() || len < record.len {
            return EINVAL.to_errno() as isize;
        }
        let mut writer = UserSlice::new(buf as usize, len).writer();
        if let Err(e) = writer.write_slice(&record.bytes[..record.len]) {
            return e.to_errno() as isize;
        }
        state.seen.store(snapshot.generation, Ordering::Relaxed);
        *pos = record.len as bindings::loff_t;
        record.len as isize
    }

    /// `poll`: readable when the generation moved since this file's last read.
    unsafe extern "C" fn poll(file: *mut bindings::file, table: *mut bindings::poll_table_struct) -> c_uint {
        // SAFETY: called by the VFS on a file opened by `open`.
        let state = unsafe { open_file(file) };
        let shared = state.shared();
        let table = table.cast::<PollTable>();
        // SAFETY: this is `poll_wait(file, &shared.wait, table)`: `table` is
        // null or a valid poll table for this call; the wait queue outlives
        // the file (see `OpenFile::shared`), as poll_wait requires.
        unsafe {
            if !table.is_null() {
                if let Some(qproc) = (*table).qproc {
                    qproc(file, shared.wait.get(), table);
                }
            }
        }
        if shared.figures.generation() != state.seen.load(Ordering::Relaxed) {
            EPOLLIN | EPOLLRDNORM
        } else {
            0
        }
    }
}
