//! The generated skeletons, and the owner that lets them live in a struct.

use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use libbpf_rs::OpenObject;

/// A module holding one generated skeleton. Generated code: its style is
/// libbpf-cargo's, not ours.
macro_rules! skeleton {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::nursery,
            dead_code,
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            unsafe_op_in_unsafe_fn,
            unused_imports,
            unused_qualifications
        )]
        pub(crate) mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

skeleton!(runqlat, "runqlat.skel.rs");
skeleton!(events, "events.skel.rs");
skeleton!(netpolicy, "netpolicy.skel.rs");

/// A loaded skeleton together with the `OpenObject` slot it borrows.
///
/// libbpf-rs skeletons borrow caller-provided storage (`Skel<'obj>`), which
/// suits a `main` that outlives them but not a value quantumd moves into its
/// event loop. This owns the slot on the heap, hands the skeleton a
/// `'static` borrow of it, and drops the skeleton strictly before freeing the
/// slot, so the borrow never dangles.
pub(crate) struct Owned<S> {
    skel: ManuallyDrop<S>,
    slot: NonNull<MaybeUninit<OpenObject>>,
}

impl<S> Owned<S> {
    /// Runs `build` with a fresh slot and keeps what it returns.
    ///
    /// # Safety
    ///
    /// The slot reference must end up only inside the returned `S` (as the
    /// generated `open`/`load` do): not in `E`, not anywhere else.
    pub(crate) unsafe fn new<E>(build: impl FnOnce(&'static mut MaybeUninit<OpenObject>) -> Result<S, E>) -> Result<Self, E> {
        let slot = NonNull::from(Box::leak(Box::new(MaybeUninit::uninit())));
        // SAFETY: the slot is a fresh, unique heap allocation that lives until
        // `drop` (or the error path below), after everything borrowing it.
        match build(unsafe { &mut *slot.as_ptr() }) {
            Ok(skel) => Ok(Self {
                skel: ManuallyDrop::new(skel),
                slot,
            }),
            Err(e) => {
                // SAFETY: `build` failed, so by the contract nothing borrows the slot any more.
                drop(unsafe { Box::from_raw(slot.as_ptr()) });
                Err(e)
            }
        }
    }
}

impl<S> Deref for Owned<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.skel
    }
}

impl<S> DerefMut for Owned<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.skel
    }
}

impl<S> Drop for Owned<S> {
    fn drop(&mut self) {
        // SAFETY: the skeleton is dropped exactly once, here, and before the
        // slot it borrows; the slot came from `Box::leak` in `new`.
        unsafe {
            ManuallyDrop::drop(&mut self.skel);
            drop(Box::from_raw(self.slot.as_ptr()));
        }
    }
}

// SAFETY: the slot is only reached through the skeleton, so `Owned<S>` may
// cross threads exactly when the skeleton may (the generated ones are Send).
unsafe impl<S: Send> Send for Owned<S> {}
