//! Wall-clock time, injectable so lease and expiry logic can be tested with paused time.

use std::time::SystemTime;

use ieum_model::Timestamp;
use tokio::time::Instant;

/// Where the registry reads the wall-clock time for timestamps. Durations (leases,
/// timeouts) always use `tokio::time::Instant`, which tests pause and advance.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }
}

/// A clock that follows tokio's time from a fixed starting point, so that with paused time
/// (`#[tokio::test(start_paused = true)]`) wall-clock timestamps advance exactly as
/// `tokio::time::advance` says.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: Timestamp,
    anchor: Instant,
}

impl TokioClock {
    /// A clock reading `wall` now.
    pub fn starting_at(wall: Timestamp) -> Self {
        TokioClock {
            wall,
            anchor: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.wall.plus(self.anchor.elapsed().into())
    }
}
