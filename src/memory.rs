//! The allocator: jemalloc (`tikv-jemallocator`), and what it reports.
//!
//! A control plane's memory follows its proxies: ten thousand sidecars connect, take a
//! push and some leave again. The allocator must hand memory back to the system once they
//! are gone, without a hand-written reclaimer or tuning of glibc's allocator. jemalloc does
//! this by itself (the options are compiled in through `.cargo/config.toml`, so no
//! environment variable or re-exec is involved):
//!
//! - `background_thread:true`: a jemalloc thread purges unused pages on its own schedule,
//!   so memory goes back even when no thread of ours allocates or frees afterwards (an idle
//!   server after a fleet left).
//! - `dirty_decay_ms:1000`: freed pages are returned within about a second (jemalloc's
//!   default is 10 s). Shorter decays cost purge work during pushes; longer ones make RSS
//!   trail departures for longer. Measured in `BENCHMARKS.md`.
//! - `muzzy_decay_ms:0`: pages are released outright (`MADV_DONTNEED`), so RSS drops at
//!   once rather than when the kernel comes under pressure.
//! - `tcache:false`: no per-thread caches of freed objects. A thread's cache is trimmed
//!   only as that thread allocates, so after a fleet left, the idle worker threads kept
//!   what it freed: RSS stayed at 124-140% of its start with caches (35% less with small
//!   objects only cached), 107% without, for pushes within noise (`BENCHMARKS.md`).
//! - `lg_extent_max_active_fit:0`: a freed extent is reused only for a request of its own
//!   size class, not split for a smaller one. A push frees buffers of tens to hundreds of
//!   kilobytes whose pages it wrote; split up, they became the 16 KiB write buffers and
//!   small slabs of the connections that came next, which then held those written pages
//!   for the life of the connection, though they use a fraction of them. With it, an idle
//!   stream's RSS no longer depends on the size of its first pushes: 33-40 KiB at 100 and
//!   1,000 RedisClusters, now 26-27 KiB as at 10; pushes within noise (`BENCHMARKS.md`).
//! - `slab_sizes:1-14336:16`: every small size class (up to 14 KiB) is carved from slabs
//!   of 16 pages (64 KiB; jemalloc caps the smallest classes lower) instead of the fewest
//!   pages that fit a whole number of regions (one page for 4 KiB regions, two for 8 KiB).
//!   jemalloc keeps a record (`edata`) for every extent it ever had at once, in metadata it
//!   never unmaps, and one page per extent in its page map; each connection's h2 buffers
//!   had been an extent or two of their own. After a fleet of 10,000 left, RSS stayed at
//!   114-115% of its start, 7.4-7.8 MB of it those records; with larger slabs 109%, of which
//!   3.3-4.6 MB records. RSS per idle stream and pushes within noise (`BENCHMARKS.md`).
//! - `narenas:1`: one arena for every thread instead of jemalloc's default of four per CPU.
//!   Each arena a thread allocates from holds its own partly used slabs of every size class
//!   and its own free extents, a cost paid once per arena in use; with an arena per thread,
//!   a fleet of 100 idle streams measured 28.6-35.0 KiB RSS per stream, with one 21.7-26.1
//!   (one arena per CPU, `percpu_arena`, measured 23.3-24.0, but jemalloc turns it off
//!   for a process pinned to some of the machine's CPUs, as a pod with a cpuset is, and
//!   otherwise makes an arena for each of the host's CPUs, however low the pod's limit).
//!   Without thread caches every allocation takes its size class's lock, so one arena
//!   serializes the worker threads' allocations: on 2 cores pushes measured within 10% of
//!   before. The Kubernetes watch after a list of 20,000 Pods: with one arena 64.7-65.2
//!   MiB more than on an empty cluster against 57.3 while every Pod had its own label
//!   map; since the Pods share their label sets, 16.8 against 17.1 (`scripts/bench-watch`).
//!   On a machine with many cores, where that lock shows in a profile, more arenas
//!   can be given at run time: jemalloc reads `_RJEM_MALLOC_CONF` (for example
//!   `narenas:4`) after the compiled-in options.
//!
//! jemalloc was chosen over mimalloc by measurement (`BENCHMARKS.md`, "Allocator").

/// Refreshes jemalloc's statistics, which it caches until the next "epoch".
fn refresh() -> bool {
    tikv_jemalloc_ctl::epoch::advance().is_ok()
}

/// Bytes the program holds: allocated and not freed. `None` when jemalloc cannot tell.
pub fn heap_in_use() -> Option<usize> {
    if !refresh() {
        return None;
    }
    tikv_jemalloc_ctl::stats::allocated::read().ok()
}

/// Bytes of the heap that are resident: the program's live memory plus what jemalloc has
/// not yet returned (dirty pages, its own metadata). Falls toward the live heap as the
/// background thread purges. `None` when jemalloc cannot tell.
pub fn heap_resident() -> Option<usize> {
    if !refresh() {
        return None;
    }
    tikv_jemalloc_ctl::stats::resident::read().ok()
}

/// Bytes of jemalloc's own metadata (`stats.metadata`: its extent records, radix tree and
/// arena structures). jemalloc keeps it for the most extents it ever had and reuses it,
/// so it grows with the peak of the heap, not with what is live. `None` when jemalloc
/// cannot tell.
pub fn allocator_metadata() -> Option<usize> {
    if !refresh() {
        return None;
    }
    tikv_jemalloc_ctl::stats::metadata::read().ok()
}

/// Live allocations by jemalloc size class: `(size in bytes, how many)`, small classes
/// (slab regions) and large ones (extents of their own) together, from jemalloc's merged
/// arena statistics (`curregs`, `curlextents`). A heap profile by size: the difference of
/// two readings shows what a change of load holds. `None` when jemalloc cannot tell.
pub fn live_by_size_class() -> Option<Vec<(u64, u64)>> {
    if !refresh() {
        return None;
    }
    let mut text = Vec::new();
    let mut options = tikv_jemalloc_ctl::stats_print::Options::default();
    options.json_format = true;
    options.skip_per_arena = true;
    options.skip_mutex_statistics = true;
    tikv_jemalloc_ctl::stats_print::stats_print(&mut text, options).ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let j = &stats["jemalloc"];
    let column = |v: &serde_json::Value, field: &str| -> Vec<u64> {
        v.as_array()
            .map(|a| a.iter().map(|c| c[field].as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let merged = &j["stats.arenas"]["merged"];
    let small = column(&j["arenas"]["bin"], "size")
        .into_iter()
        .zip(column(&merged["bins"], "curregs"));
    let large = column(&j["arenas"]["lextent"], "size")
        .into_iter()
        .zip(column(&merged["lextents"], "curlextents"));
    let out: Vec<(u64, u64)> = small.chain(large).filter(|(_, n)| *n > 0).collect();
    (!out.is_empty()).then_some(out)
}

/// Whether jemalloc's background purging thread is on (it is, by the compiled-in options).
#[cfg(test)]
fn background_purging() -> bool {
    tikv_jemalloc_ctl::background_thread::read().unwrap_or(false)
}

/// Whether jemalloc keeps per-thread caches of freed objects (it does not, by the
/// compiled-in options).
#[cfg(test)]
fn thread_caches() -> bool {
    tikv_jemalloc_ctl::opt::tcache::read().unwrap_or(true)
}

/// How many automatic arenas jemalloc was configured with (`opt.narenas`; 1 by the
/// compiled-in options). jemalloc adds a dedicated arena for huge allocations on top.
#[cfg(test)]
fn arenas() -> Option<u32> {
    tikv_jemalloc_ctl::opt::narenas::read().ok()
}

/// The slab size, in bytes, from which jemalloc carves regions of `size` bytes; `None` when
/// `size` is not one of its small size classes (`arenas.bin.<i>.size`, `.slab_size`).
#[cfg(test)]
fn slab_size(size: usize) -> Option<usize> {
    use tikv_jemalloc_ctl::{Access, AsName};
    let bins: u32 = b"arenas.nbins\0".name().read().ok()?;
    (0..bins).find_map(|i| {
        let key = |field: &str| format!("arenas.bin.{i}.{field}\0").into_bytes();
        let bin_size: usize = key("size").name().read().ok()?;
        (bin_size == size)
            .then(|| key("slab_size").name().read().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_run_with_background_purging_and_report_the_heap() {
        assert!(
            background_purging(),
            "jemalloc's background thread is off: the options in .cargo/config.toml did not reach the build"
        );
        assert!(
            !thread_caches(),
            "jemalloc's thread caches are on: the options in .cargo/config.toml did not reach the build"
        );
        assert_eq!(
            slab_size(8192),
            Some(64 << 10),
            "jemalloc's slab sizes are its defaults: the options in .cargo/config.toml did not reach the build"
        );
        assert_eq!(slab_size(8200), None, "not a size class");
        assert_eq!(
            arenas(),
            Some(1),
            "jemalloc has an arena per thread: the options in .cargo/config.toml did not reach the build"
        );
        let before = heap_in_use().expect("jemalloc statistics");
        let block = vec![7u8; 8 << 20];
        let during = heap_in_use().expect("jemalloc statistics");
        assert!(
            during >= before + (8 << 20) - (1 << 20),
            "an 8 MiB allocation is not counted: {before} -> {during}"
        );
        assert!(heap_resident().expect("jemalloc statistics") >= during);
        drop(block);
    }
}
