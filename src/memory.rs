//! The allocator's view of memory, and handing freed memory back to the system.
//!
//! The only unsafe code of the crate: two calls into glibc's allocator, which have no
//! preconditions. Elsewhere the crate denies `unsafe`.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes handed out by the allocator and not yet freed: the live heap, without what the
/// allocator keeps in reserve. `None` where the allocator cannot tell (not glibc).
pub fn heap_in_use() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks + info.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns the allocator's free pages to the system. glibc keeps freed memory in its
/// arenas for reuse; after thousands of streams leave, that is most of the process.
/// Returns whether anything was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a padding size and has no other preconditions; it
        // only gives pages that hold no allocation back with madvise.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Gives freed memory back to the system after proxies leave.
///
/// glibc keeps what thousands of departed streams freed, so a server that once held a
/// large fleet would keep its peak RSS forever. Each departure (a stream ending, a
/// connection closing: see `crate::xds::conn`) is noted here; once departures pause for
/// `quiet`, the free pages are released, at most once per `min_interval` (a trim walks the
/// allocator's free lists under its locks).
#[derive(Debug)]
pub struct Reclaimer {
    notify: tokio::sync::Notify,
    /// Departures so far.
    departures: AtomicU64,
    /// Departures that happened before the start of the last release.
    released_after: AtomicU64,
    released: AtomicU64,
    open: AtomicU64,
    quiet: std::time::Duration,
    min_interval: std::time::Duration,
}

impl Default for Reclaimer {
    fn default() -> Self {
        Reclaimer::new(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(10),
        )
    }
}

impl Reclaimer {
    /// A reclaimer that waits `quiet` after the last departure and trims at most once per
    /// `min_interval`.
    pub fn new(quiet: std::time::Duration, min_interval: std::time::Duration) -> Self {
        Reclaimer {
            notify: tokio::sync::Notify::new(),
            departures: AtomicU64::new(0),
            released_after: AtomicU64::new(0),
            released: AtomicU64::new(0),
            open: AtomicU64::new(0),
            quiet,
            min_interval,
        }
    }

    /// A stream ended or a connection closed.
    pub fn departed(&self) {
        self.departures.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// A large buffer was freed (a response of a few hundred KiB, once written): after a
    /// burst of them, as when a fleet connects and each proxy gets its first full push,
    /// the allocator holds their pages until they are released like a departure's.
    pub fn large_buffer_freed(&self) {
        self.departed();
    }

    /// A connection was accepted; [`Reclaimer::connection_closed`] follows when it closes.
    pub fn connection_opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection closed: its buffers are free now.
    pub fn connection_closed(&self) {
        // Counted as a departure first: whoever sees no open connection also sees that a
        // release is due.
        self.departed();
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// How many times memory was released so far.
    pub fn releases(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// Whether every departure so far was followed by a release.
    pub fn settled(&self) -> bool {
        self.released_after.load(Ordering::Acquire) == self.departures.load(Ordering::Acquire)
    }

    /// Releases memory after departures until `shutdown`.
    pub async fn run(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.notify.notified() => {}
            }
            // Wait until nobody left for `quiet`, and for the minimum interval.
            loop {
                let earliest = last.map(|l| l + self.min_interval);
                let until = earliest.map_or(tokio::time::Instant::now() + self.quiet, |e| {
                    e.max(tokio::time::Instant::now() + self.quiet)
                });
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.notify.notified() => continue,
                    () = tokio::time::sleep_until(until) => break,
                }
            }
            // Departures after this point are not covered by this release.
            let covered = self.departures.load(Ordering::Acquire);
            let released = tokio::task::spawn_blocking(release_free_memory)
                .await
                .unwrap_or(false);
            last = Some(tokio::time::Instant::now());
            self.released_after.store(covered, Ordering::Release);
            self.released.fetch_add(1, Ordering::Release);
            tracing::debug!(
                released,
                "returned free memory to the system after departures"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn should_release_once_departures_pause_and_not_more_often_than_the_interval() {
        let r = std::sync::Arc::new(Reclaimer::new(
            Duration::from_secs(1),
            Duration::from_secs(10),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let r = std::sync::Arc::clone(&r);
            let stop = stop.clone();
            async move { r.run(stop).await }
        });
        // Nothing happens without departures.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(r.releases(), 0);
        // Departures every 500 ms keep postponing the release.
        for _ in 0..6 {
            r.departed();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(r.releases(), 0, "released while proxies were still leaving");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(r.releases(), 1);
        // Another departure right after: held back until the interval has passed.
        r.departed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(r.releases(), 1, "released twice within the interval");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(r.releases(), 2);
        stop.cancel();
        task.await.expect("the reclaimer ends on shutdown");
    }
}

/// The glibc tunables this server runs with, as (name, value).
///
/// - `tcache_count=0`: no per-thread cache of freed chunks. glibc keeps up to seven freed
///   chunks per size class in a cache of each thread, which `malloc_trim` cannot reach.
///   After a fleet left, those chunks sat scattered through the worker threads' arenas and
///   kept their pages resident: at 1,000 streams about 1.5 MB, 15% of the starting RSS.
/// - `trim_threshold=131072`: glibc's default, but fixed. Left to itself glibc raises the
///   threshold (up to 64 MiB) each time a large block is freed, and the free space at the
///   top of a worker thread's arena, below that threshold, is never given back, by `free`
///   or by `malloc_trim`. After 10,000 streams left, that kept 1 to 7 MB resident, 10 to 45%
///   of the starting RSS, varying from run to run.
/// - `mxfast=0`: no fast bins. `malloc_trim` first merges the chunks waiting in fast bins;
///   those next to the free top of a worker thread's arena merge into it, and that top is
///   what it does not give back. In about one run in five at 10,000 streams this kept 2 to
///   50 MB resident after a fleet left; without fast bins every free merges at once and
///   the top is trimmed as it grows (ten runs out of ten within 5%).
///
/// With these, RSS returns to within 5% of its start at 1,000 and 10,000 streams, and
/// pushes measured no slower (`BENCHMARKS.md`).
pub const ALLOCATOR_TUNABLES: [(&str, &str); 3] = [
    ("glibc.malloc.tcache_count", "0"),
    ("glibc.malloc.trim_threshold", "131072"),
    ("glibc.malloc.mxfast", "0"),
];

/// `GLIBC_TUNABLES` with those of [`ALLOCATOR_TUNABLES`] added that the operator did not
/// set (theirs stand), or `None` when there is nothing to add.
pub fn tunables_with_ours(current: Option<&str>) -> Option<String> {
    let current = current.unwrap_or_default();
    let set: Vec<&str> = current
        .split(':')
        .filter_map(|t| t.split_once('=').map(|(name, _)| name))
        .collect();
    let missing: Vec<String> = ALLOCATOR_TUNABLES
        .iter()
        .filter(|(name, _)| !set.contains(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let ours = missing.join(":");
    Some(if current.is_empty() {
        ours
    } else {
        format!("{current}:{ours}")
    })
}

/// Set in the environment of the restarted process image.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RESTARTED: &str = "REDIS_XDS_ALLOCATOR_RESTARTED";

/// Restarts this process image with [`ALLOCATOR_TUNABLES`] in effect, unless they already
/// are (glibc reads tunables only at process start). Same process id, same arguments; on
/// any failure the process simply continues with the allocator as it is.
pub fn reexec_with_allocator_tunables() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        // Once only: glibc drops tunables in secure-execution mode (setuid, file
        // capabilities), where they would never show up and the restart would repeat.
        if std::env::var_os(RESTARTED).is_some() {
            return;
        }
        // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return;
        }
        let current = std::env::var("GLIBC_TUNABLES").ok();
        let Some(tunables) = tunables_with_ours(current.as_deref()) else {
            return;
        };
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        // Only returns on failure.
        let error = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", &tunables)
            .env(RESTARTED, "1")
            .exec();
        eprintln!("note: running without GLIBC_TUNABLES={tunables} ({error})");
    }
}

#[cfg(test)]
mod tunable_tests {
    use super::*;

    const OURS: &str =
        "glibc.malloc.tcache_count=0:glibc.malloc.trim_threshold=131072:glibc.malloc.mxfast=0";

    #[test]
    fn should_add_our_tunables_and_keep_the_operators_choices() {
        assert_eq!(tunables_with_ours(None).as_deref(), Some(OURS));
        assert_eq!(tunables_with_ours(Some("")).as_deref(), Some(OURS));
        assert_eq!(
            tunables_with_ours(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some(format!("glibc.malloc.arena_max=2:{OURS}").as_str())
        );
        // The operator's value of one of ours stands; the others are added.
        assert_eq!(
            tunables_with_ours(Some("glibc.malloc.tcache_count=3")).as_deref(),
            Some(
                "glibc.malloc.tcache_count=3:glibc.malloc.trim_threshold=131072:glibc.malloc.mxfast=0"
            )
        );
        // All set already (by us after the restart, or by the operator): no restart.
        assert_eq!(tunables_with_ours(Some(OURS)), None);
        assert_eq!(
            tunables_with_ours(Some(
                "glibc.malloc.mxfast=64:glibc.malloc.trim_threshold=1048576:glibc.malloc.tcache_count=7"
            )),
            None
        );
    }
}
