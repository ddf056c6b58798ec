//! Heap bytes of the projection per image (the "under 1 KiB of projection per image"),
//! measured with a counting allocator: a state folded from the log of N images, minus the empty
//! state. Also the encoded log bytes per event. Prints; no timing.
//!
//! `cargo bench -p amisim-core --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use amisim_core::state::Image;
use amisim_core::State;
use prost::Message;

mod common;

/// Live heap bytes.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to `System` unchanged; only a counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    println!(
        "size_of::<Image>() = {} bytes inline (before its strings, mappings and tags)",
        std::mem::size_of::<Image>()
    );
    for n in [10_000usize, common::IMAGES] {
        let fx = common::fixture(n);
        let log = &fx.region.log;
        let before = LIVE.load(Ordering::Relaxed);
        let mut state = State::new();
        for e in log {
            state.apply(e);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        let encoded: usize = log.iter().map(|e| e.encoded_len()).sum();
        println!(
            "{n:>7} images: projection {:>6.1} MiB = {:>5} bytes/image; log {} events, {} bytes/event encoded",
            bytes as f64 / (1024.0 * 1024.0),
            bytes / n as isize,
            log.len(),
            encoded / log.len().max(1),
        );
        std::hint::black_box(&state);
    }
}
