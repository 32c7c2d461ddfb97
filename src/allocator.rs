//! How the binaries' allocator (mimalloc) gives memory back to the system.
//!
//! Why: mimalloc returns ("purges") memory it has not used for a second, with `madvise`; the
//! next allocation there page-faults zeroed pages back in. A dispatch server's memory is
//! steady (the same drivers, the same in-flight trips), so it purges and re-faults the same
//! pages all day: in the city run (100k drivers, 1,000 requests/s) turning purging off cut the
//! server's CPU by ~8 % and the request -> offer p99 by ~10 %, for ~8 % more resident memory
//! (README, Performance). So the binaries keep freed memory for reuse, unless the operator
//! says otherwise with mimalloc's own `MIMALLOC_PURGE_DELAY` (milliseconds; `-1` never).

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, v3: the 16th option). The test below
/// pins the number to the option by its documented default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// The environment variable mimalloc reads the option from; when set, it wins.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Keeps freed memory for reuse instead of returning it to the system (see the module docs),
/// unless `MIMALLOC_PURGE_DELAY` is set. Call first thing in `main`; it only matters in a
/// binary whose global allocator is mimalloc.
pub fn keep_freed_memory() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        set_purge_delay(-1);
    }
}

#[allow(unsafe_code)]
fn set_purge_delay(ms: std::ffi::c_long) {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table (an atomic
    // write); options may be set at any time, and the purge code reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms) }
}

#[cfg(test)]
#[allow(unsafe_code)]
fn purge_delay() -> std::ffi::c_long {
    // SAFETY: mi_option_get only reads (and on first use initialises) the option's value.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: its default (1,000 ms in v3) is what
    /// option 15 holds before anything sets it, and setting it sticks. (The test binary's
    /// allocator is the system's; the options table is mimalloc's all the same.)
    #[test]
    fn option_15_is_the_purge_delay() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return; // the environment decides the value: nothing to pin here
        }
        assert_eq!(
            purge_delay(),
            1_000,
            "mimalloc's default purge delay, in ms"
        );
        keep_freed_memory();
        assert_eq!(purge_delay(), -1);
    }
}
