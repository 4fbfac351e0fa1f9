//! Test-only allocation probe: measures the largest single allocation and
//! the peak of live bytes made by one thread while a closure runs, so tests
//! can show the decoder never allocates on a peer's say-so.
//!
//! Owns: the test binary's global allocator (a pass-through to `System`).
//! Must never: allocate itself, or be compiled outside tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Probe;

#[global_allocator]
static PROBE: Probe = Probe;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK_LIVE: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(grow: usize, shrink: usize, request: usize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = ON.try_with(|on| {
        if !on.get() {
            return;
        }
        let _ = LARGEST.try_with(|l| l.set(l.get().max(request)));
        let _ = LIVE.try_with(|live| {
            let now = live.get() + grow as isize - shrink as isize;
            live.set(now);
            let _ = PEAK_LIVE.try_with(|p| p.set(p.get().max(now)));
        });
    });
}

unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 0, layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 0, layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, layout.size(), 0);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size, layout.size(), new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What `measure` saw.
#[derive(Clone, Copy, Debug)]
pub struct Allocs {
    /// The largest single allocation (or reallocation) requested.
    pub largest: usize,
    /// The peak of bytes allocated and not yet freed, counted from the start.
    pub peak_live: usize,
}

/// Run `f` on this thread and report its allocations.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Allocs) {
    LIVE.with(|c| c.set(0));
    PEAK_LIVE.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    ON.with(|c| c.set(true));
    let out = f();
    ON.with(|c| c.set(false));
    let allocs = Allocs {
        largest: LARGEST.with(Cell::get),
        peak_live: PEAK_LIVE.with(Cell::get).max(0) as usize,
    };
    (out, allocs)
}
