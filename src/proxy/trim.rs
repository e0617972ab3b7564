//! Memory back to the system after a wave of closes.
//!
//! glibc's malloc keeps what closed tunnels freed: after 8,000 tunnels opened in
//! a burst and closed, wsgate's RSS stayed 19 MiB above where it started (README,
//! benchmark). That memory is free inside malloc's arenas, but on pages that also
//! hold a live allocation or below the top of a heap, which glibc trims only when
//! the free space there is contiguous. `malloc_trim(0)` walks every arena and hands
//! each whole free page back to the kernel (`MADV_DONTNEED`). It costs a few
//! milliseconds on a large heap, with the arenas' locks held, so wsgate calls it
//! only after many tunnels have gone: when the number open has fallen by a quarter,
//! and by at least 256, from its high point since the last trim (looked at every
//! 2 s, on a blocking thread).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::Proxy;

/// How often the open count is looked at.
const EVERY: Duration = Duration::from_secs(2);
/// The smallest fall in open tunnels worth a trim.
const MIN_FALL: usize = 256;

/// Trims after each wave of closes, for as long as the process runs.
pub async fn after_closes(proxy: Arc<Proxy>) {
    let mut high = 0;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = proxy.registry.len();
        high = usize::max(high, open);
        if !worth_a_trim(high, open) {
            continue;
        }
        let t = Instant::now();
        let returned = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(
            closed = high - open,
            open,
            returned,
            took_ms = t.elapsed().as_millis() as u64,
            "gave freed memory back after a wave of closes"
        );
        high = open;
    }
}

/// Whether the open count fell far enough from its high point.
fn worth_a_trim(high: usize, open: usize) -> bool {
    let fall = high.saturating_sub(open);
    fall >= MIN_FALL && fall * 4 >= high
}

/// `malloc_trim(0)`; true if memory was given back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim has no preconditions; it takes glibc's own arena locks
    // and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl) have no `malloc_trim`; nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::worth_a_trim;

    #[test]
    fn a_trim_waits_for_a_fall_of_a_quarter_and_at_least_256() {
        assert!(!worth_a_trim(0, 0));
        assert!(!worth_a_trim(200, 0), "fewer than 256 closed");
        assert!(worth_a_trim(256, 0));
        assert!(worth_a_trim(8000, 6000), "a quarter of 8,000");
        assert!(!worth_a_trim(8000, 6001));
        assert!(!worth_a_trim(100_000, 99_000), "1% of a large pod is churn");
    }
}
