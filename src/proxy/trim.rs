//! Memory back to the system after a wave of closes, and after a burst of opens.
//!
//! glibc's malloc keeps what closed tunnels freed: after 8,000 tunnels opened in
//! a burst and closed, wsgate's RSS stayed 19 MiB above where it started (README,
//! benchmark). That memory is free inside malloc's arenas, but on pages that also
//! hold a live allocation or below the top of a heap, which glibc trims only when
//! the free space there is contiguous. `malloc_trim(0)` walks every arena and hands
//! each whole free page back to the kernel (`MADV_DONTNEED`).
//!
//! A burst of opens (a reconnect storm) leaves the same kind of free memory while
//! the tunnels stay: the handshakes in flight (64 at a time in the benchmark) held
//! read buffers and requests that are freed once each tunnel is up, on pages the
//! tunnels' own long-lived allocations share. 8,000 tunnels opened in a burst held
//! 2.2 MiB (0.28 KiB per tunnel) of such pages until a trim.
//!
//! A trim costs a few milliseconds on a large heap, with the arenas' locks held, so
//! wsgate calls it only after a wave (looked at every 2 s, on a blocking thread):
//! when the number open has fallen by a quarter, and by at least 256, from its high
//! point since the last trim; or when it has risen by a quarter, and by at least
//! 256, from its low point and the opening has stopped (it moved by less than 1/64
//! since the last look).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::proxy::live::Proxy;

/// How often the open count is looked at.
const EVERY: Duration = Duration::from_secs(2);
/// The smallest fall or rise in open tunnels worth a trim.
const MIN_WAVE: usize = 256;

/// Trims after each wave of closes or burst of opens, for as long as the process
/// runs.
pub async fn after_waves(proxy: Arc<Proxy>) {
    let mut waves = Waves::default();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = proxy.registry.len();
        let Some(wave) = waves.look(open) else {
            continue;
        };
        let t = Instant::now();
        let returned = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(
            after = wave,
            open,
            returned,
            took_ms = t.elapsed().as_millis() as u64,
            "gave freed memory back to the system"
        );
    }
}

/// The open counts since the last trim.
#[derive(Default)]
struct Waves {
    high: usize,
    low: usize,
    last: usize,
}

impl Waves {
    /// Takes the open count of one look; says which wave, if any, a trim follows.
    fn look(&mut self, open: usize) -> Option<&'static str> {
        self.high = self.high.max(open);
        self.low = self.low.min(open);
        let settled = open.abs_diff(self.last) <= open / 64;
        self.last = open;
        let fall = self.high - open;
        let rise = open - self.low;
        let wave = if fall >= MIN_WAVE && fall * 4 >= self.high {
            "a wave of closes"
        } else if rise >= MIN_WAVE && rise * 4 >= open && settled {
            "a burst of opens"
        } else {
            return None;
        };
        (self.high, self.low) = (open, open);
        Some(wave)
    }
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
    use super::Waves;

    /// The looks at which a trim follows, for a series of open counts.
    fn trims(counts: &[usize]) -> Vec<(usize, &'static str)> {
        let mut w = Waves::default();
        counts
            .iter()
            .enumerate()
            .filter_map(|(i, &n)| w.look(n).map(|wave| (i, wave)))
            .collect()
    }

    #[test]
    fn a_trim_follows_a_fall_of_a_quarter_and_at_least_256() {
        assert_eq!(trims(&[200, 200, 0]), vec![], "fewer than 256 closed");
        assert_eq!(trims(&[8000, 8000, 6001]), vec![(1, "a burst of opens")]);
        assert_eq!(
            trims(&[8000, 8000, 6000]),
            vec![(1, "a burst of opens"), (2, "a wave of closes")]
        );
        let big: Vec<usize> = [100_000, 100_000, 99_000, 98_500].into();
        assert_eq!(
            trims(&big),
            vec![(1, "a burst of opens")],
            "1% of a large pod is churn"
        );
    }

    #[test]
    fn a_trim_follows_a_burst_of_opens_once_it_stops() {
        // Still opening at every look: no trim until the count settles.
        assert_eq!(
            trims(&[0, 2000, 4000, 6000, 8000, 8050, 8050]),
            vec![(5, "a burst of opens")]
        );
        // Then nothing until the next wave, up or down: 400 more is churn, a
        // rise to 10,700 (over a quarter) is a burst.
        assert_eq!(
            trims(&[0, 8000, 8000, 8400, 8400, 10_700, 10_700]),
            vec![(2, "a burst of opens"), (6, "a burst of opens")]
        );
        assert_eq!(
            trims(&[0, 100, 200, 200, 200]),
            vec![],
            "fewer than 256 opened"
        );
    }
}
