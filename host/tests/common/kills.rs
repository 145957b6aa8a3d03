//! What the kill campaigns share (`crash.rs` on one data directory,
//! `postgres.rs` across processes): where a kill aims, a seeded generator
//! for when, and waiting for a run to get there.

use std::time::{Duration, Instant};

/// Where a kill aims: a run waiting in the queue behind another, or a run
/// seen running in a stage (an index of `step_progress`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Queued,
    Stage(usize, &'static str),
}

/// Every place a kill aims at, in turn.
pub const TARGETS: [Target; 6] = [
    Target::Stage(0, "intake"),
    Target::Stage(1, "sql"),
    Target::Stage(2, "transform"),
    Target::Stage(3, "variables"),
    Target::Stage(4, "load"),
    Target::Queued,
];

/// A small xorshift generator: the seed is printed with every failure.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock.
    pub fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64)
            | 1;
        Self(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Waits until `id` is where `target` aims, or has ended; says whether it
/// got there.
pub async fn reach(base: &str, id: &str, target: Target) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let doc = super::status_of(base, id).await;
        let there = match target {
            Target::Queued => doc["status"] == "queued",
            Target::Stage(i, _) => doc["status"] == "running" && doc["step_progress"][i]["status"] == "running",
        };
        if there {
            return true;
        }
        if !matches!(doc["status"].as_str(), Some("queued" | "running")) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}
