//! The clocks a guest sees through WASI `clock_time_get`, behind a trait so a simulation can
//! run transforms on its own time (the host itself never reads the clock for a decision).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Time as the guest sees it, in nanoseconds.
pub trait GuestClock: Send + Sync {
    /// WASI realtime: nanoseconds since the Unix epoch.
    fn realtime_ns(&self) -> u64;
    /// WASI monotonic: nanoseconds since an arbitrary, fixed origin; never goes back.
    fn monotonic_ns(&self) -> u64;
}

/// The machine's clocks; monotonic time counts from the clock's creation.
#[derive(Debug)]
pub struct SystemGuestClock {
    origin: Instant,
}

impl SystemGuestClock {
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for SystemGuestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestClock for SystemGuestClock {
    fn realtime_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
