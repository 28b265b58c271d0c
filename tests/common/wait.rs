//! Waiting for something a daemon or another process does, with a bound.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a test waits for a daemon to do something before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 100 ms until it gives a value; fails the test after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
