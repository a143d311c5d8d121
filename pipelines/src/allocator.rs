//! Settings of the pipeline's allocator (mimalloc, the `touchpoint` binary's global allocator).

/// mimalloc's `mi_option_purge_delay` (its place in mimalloc v3's `mi_option_e`; libmimalloc-sys names
/// only some options). A test checks it against the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory the pipeline freed for reuse instead of handing it back to the operating system.
///
/// By default mimalloc returns ("purges") free pages about a second after they were freed. The pipeline
/// frees and re-allocates the same amounts every epoch (records, batches, changelog snapshots), and each
/// purged page came back as a page fault that zeroes it, 2 MiB at a time with transparent huge pages: a
/// fifth of the workers' time went to the kernel zeroing pages (perf, benches/README.md "Profiling").
/// Without purging the process keeps its peak heap, which a deployment sizes for anyway (the keyed state
/// dominates it, and it only shrinks when subjects expire). End to end ×1.04–1.18 (five alternating pairs).
pub fn keep_freed_memory() {
    // SAFETY: sets one integer option of mimalloc's global option table; mimalloc reads options at any
    // time and this one only changes when free pages are returned to the OS. Called once at start-up,
    // before the pipeline's threads exist (mimalloc's option setters are not synchronized).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_where_we_set_it() {
        // mimalloc v3's default purge delay is 1000 ms; no other option defaults to 1000.
        // SAFETY: reads one option; nothing in this test binary sets it.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, 1000, "option {} is not mimalloc's purge_delay", super::MI_OPTION_PURGE_DELAY);
    }
}
