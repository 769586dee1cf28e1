//! Identity of this VM among the VMs of one Envoy process.

use std::cell::Cell;
use std::hash::BuildHasher;

thread_local! {
    static INSTANCE: Cell<u64> = const { Cell::new(0) };
}

/// A random non-zero number identifying this VM, fixed for its lifetime.
///
/// Random rather than a shared counter: VMs start at the same moment, and
/// creating a shared-data key cannot be made atomic (see `shared`), so a
/// counter could hand two VMs the same id. std's `RandomState` is seeded
/// from WASI `random_get`, which Envoy provides; 64 bits make a collision
/// between a handful of VMs practically impossible.
pub fn instance_id() -> u64 {
    INSTANCE.with(|cell| {
        if cell.get() == 0 {
            let id = std::collections::hash_map::RandomState::new().hash_one(0x5357_4954_4348u64);
            cell.set(id.max(1));
        }
        cell.get()
    })
}

/// This VM's linear memory in bytes (what it holds resident at most: wasm
/// memory grows and never shrinks); `None` outside wasm.
pub fn memory_bytes() -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(core::arch::wasm32::memory_size(0) * 65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}
