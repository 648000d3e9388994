//! The process's peak resident set size (Linux: VmHWM in /proc/self/status), and resetting it
//! so that the peak of one job can be measured inside a longer run (writing "5" to
//! /proc/self/clear_refs, Linux >= 4.0). Elsewhere both are no-ops and the peak is None.

/// Reset the peak to the current resident size. Returns whether it worked. Memory the
/// allocator keeps from earlier work (the binary's mimalloc holds freed blocks for a while) is
/// given back first, so the peak measured next is the coming work's own.
pub fn reset() -> bool {
    // SAFETY: mi_collect only frees memory no live allocation uses; without mimalloc as the
    // global allocator (test binaries) its heap is empty and the call does nothing.
    unsafe { libmimalloc_sys::mi_collect(true) };
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set size since the start or the last `reset`, in bytes.
pub fn peak_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// The current resident set size, in bytes.
pub fn current_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_an_allocation_and_resets() {
        // other tests of this binary run concurrently: only assertions a 256 MiB block decides
        let Some(before) = peak_bytes() else {
            return; // not Linux
        };
        assert!(before > 0 && current_bytes().is_some());
        let big = vec![1u8; 256 << 20];
        std::hint::black_box(&big);
        let with = peak_bytes().unwrap();
        assert!(with >= (256 << 20), "{with}");
        drop(big); // a block this large is unmapped when freed
        assert!(reset());
        let after = peak_bytes().unwrap();
        assert!(after + (128 << 20) < with, "reset: {after} vs {with}");
    }
}
