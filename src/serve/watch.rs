//! Watching directories the way editors and deploy tools change them.
//!
//! Each directory is watched itself and through its parent (non-recursively), so that every
//! save pattern is seen: a write in place or a temp file renamed over the target (events in the
//! directory), a file deleted and recreated, and the whole directory deleted, recreated or
//! replaced by a rename (events in the parent). A directory whose inode changed is watched
//! again. A watcher that reports an error is dropped and re-created, and the change is reported
//! as a rescan (the caller reloads everything).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::{mpsc, watch};

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSignal {
    /// Paths under the watched directories changed.
    Changed(Vec<PathBuf>),
    /// Events may have been lost (a watcher error, an overflow): look at everything again.
    Rescan { reason: String },
}

/// Watches `dirs` until `stop` turns true, sending debounced changes to `out`.
pub fn spawn(
    dirs: Vec<PathBuf>,
    recursive: bool,
    debounce: Duration,
    out: mpsc::Sender<WatchSignal>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // Nobody sends on it: only tests inject watcher errors (the kernel's are not provocable).
    let (_faults_tx, faults) = mpsc::unbounded_channel();
    spawn_with_faults(dirs, recursive, debounce, out, stop, faults)
}

/// [`spawn`], also treating every error received on `faults` as one the watcher reported.
fn spawn_with_faults(
    dirs: Vec<PathBuf>,
    recursive: bool,
    debounce: Duration,
    out: mpsc::Sender<WatchSignal>,
    mut stop: watch::Receiver<bool>,
    mut faults: mpsc::UnboundedReceiver<notify::Error>,
) -> tokio::task::JoinHandle<()> {
    let dirs: Vec<PathBuf> = dirs.into_iter().map(|dir| std::path::absolute(&dir).unwrap_or(dir)).collect();
    tokio::spawn(async move {
        let mode = if recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        let mut attempt: u32 = 0;
        loop {
            let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<DebounceEventResult>();
            let debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
                let _ = raw_tx.send(result);
            });
            let mut debouncer = match debouncer {
                Ok(debouncer) => debouncer,
                Err(error) => {
                    attempt += 1;
                    tracing::error!(%error, attempt, "Cannot create a file watcher; retrying.");
                    if sleep_or_stop(&mut stop, backoff(attempt)).await {
                        return;
                    }
                    continue;
                }
            };
            let mut watched: HashMap<PathBuf, Option<u64>> = HashMap::new();
            let mut parents: Vec<PathBuf> = dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)).collect();
            parents.sort();
            parents.dedup();
            for parent in &parents {
                if let Err(error) = debouncer.watch(parent, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %parent.display(), %error, "Cannot watch a directory.");
                }
            }
            for dir in &dirs {
                watched.insert(dir.clone(), rewatch(&mut debouncer, dir, None, mode));
            }
            if attempt > 0 {
                // Events may have been lost while there was no watcher.
                let _ = out.send(WatchSignal::Rescan { reason: "the file watcher was re-created".into() }).await;
            }
            let failure = loop {
                let result = tokio::select! {
                    _ = stop.changed() => None,
                    result = raw_rx.recv() => result,
                    Some(fault) = faults.recv() => Some(Err(vec![fault])),
                };
                let Some(result) = result else {
                    debouncer.stop_nonblocking();
                    return;
                };
                match result {
                    Ok(events) => {
                        let rescan = events.iter().any(|e| e.need_rescan());
                        // Reading the files (a reload does) is not a change.
                        let mut paths: Vec<PathBuf> = events
                            .iter()
                            .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
                            .flat_map(|e| e.paths.iter())
                            .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
                            .cloned()
                            .collect();
                        paths.sort();
                        paths.dedup();
                        // A directory deleted, recreated or replaced: watch what is there now.
                        for dir in &dirs {
                            let before = watched.get(dir).copied().flatten();
                            let now = inode(dir);
                            if now != before {
                                watched.insert(dir.clone(), rewatch(&mut debouncer, dir, before, mode));
                                paths.push(dir.clone());
                            }
                        }
                        let signal = if rescan {
                            Some(WatchSignal::Rescan { reason: "the watcher asked for a rescan".into() })
                        } else if paths.is_empty() {
                            None
                        } else {
                            Some(WatchSignal::Changed(paths))
                        };
                        if let Some(signal) = signal
                            && out.send(signal).await.is_err()
                        {
                            debouncer.stop_nonblocking();
                            return;
                        }
                    }
                    Err(errors) => {
                        break errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    }
                }
            };
            tracing::warn!(error = %failure, "The file watcher failed; re-creating it and reloading everything.");
            debouncer.stop_nonblocking();
            attempt += 1;
            if sleep_or_stop(&mut stop, backoff(attempt.min(3))).await {
                return;
            }
        }
    })
}

fn inode(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir).ok().filter(|m| m.is_dir()).map(|m| m.ino())
}

/// (Re)installs the watch on `dir` when it exists; returns its inode.
fn rewatch<W: notify::Watcher, C: notify_debouncer_full::FileIdCache>(
    debouncer: &mut notify_debouncer_full::Debouncer<W, C>,
    dir: &Path,
    before: Option<u64>,
    mode: RecursiveMode,
) -> Option<u64> {
    if before.is_some() {
        // The old inode's watch may be gone already (the kernel drops it with the directory).
        let _ = debouncer.unwatch(dir);
    }
    let now = inode(dir)?;
    match debouncer.watch(dir, mode) {
        Ok(()) => Some(now),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "Cannot watch a directory.");
            None
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)))
}

/// Sleeps; `true` when asked to stop meanwhile.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(duration) => *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_change(rx: &mut mpsc::Receiver<WatchSignal>) -> WatchSignal {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a change within 10 s").expect("open")
    }

    #[tokio::test]
    async fn every_way_of_saving_and_replacing_a_directory_is_seen() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path().join("policies");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("a.rhai"), "1").expect("write");
        let (tx, mut rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = spawn(vec![dir.clone()], true, Duration::from_millis(30), tx, stop_rx);
        tokio::time::sleep(Duration::from_millis(100)).await;

        // In place.
        std::fs::write(dir.join("a.rhai"), "2").expect("write");
        assert!(matches!(next_change(&mut rx).await, WatchSignal::Changed(_)));
        // Temp file + rename.
        std::fs::write(dir.join(".a.rhai.tmp"), "3").expect("write");
        std::fs::rename(dir.join(".a.rhai.tmp"), dir.join("a.rhai")).expect("rename");
        assert!(matches!(next_change(&mut rx).await, WatchSignal::Changed(_)));
        // Delete + recreate.
        std::fs::remove_file(dir.join("a.rhai")).expect("rm");
        std::fs::write(dir.join("a.rhai"), "4").expect("write");
        assert!(matches!(next_change(&mut rx).await, WatchSignal::Changed(_)));
        // The whole directory replaced by a rename; then a write inside the new one is seen.
        let staged = temp.path().join("policies.new");
        std::fs::create_dir(&staged).expect("mkdir");
        std::fs::write(staged.join("a.rhai"), "5").expect("write");
        std::fs::rename(&dir, temp.path().join("policies.old")).expect("move away");
        std::fs::rename(&staged, &dir).expect("move in");
        assert!(matches!(next_change(&mut rx).await, WatchSignal::Changed(_)));
        while tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_ok() {}
        std::fs::write(dir.join("a.rhai"), "6").expect("write");
        assert!(matches!(next_change(&mut rx).await, WatchSignal::Changed(_)), "the new directory is watched");

        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("joins");
    }

    #[tokio::test]
    async fn a_watcher_error_recreates_the_watcher_and_asks_for_a_full_rescan() {
        let temp = tempfile::tempdir().expect("temp");
        let dir = temp.path().join("playbooks");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("a.yaml"), "1").expect("write");
        let (tx, mut rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (faults_tx, faults) = mpsc::unbounded_channel();
        let task = spawn_with_faults(vec![dir.clone()], true, Duration::from_millis(30), tx, stop_rx, faults);
        tokio::time::sleep(Duration::from_millis(100)).await;

        // What inotify reports when its queue overflows or its watch limit is reached.
        faults_tx.send(notify::Error::generic("inotify event queue overflowed")).expect("inject");
        match next_change(&mut rx).await {
            WatchSignal::Rescan { reason } => assert!(reason.contains("re-created"), "{reason}"),
            other => panic!("expected a rescan, got {other:?}"),
        }
        // The new watcher sees changes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(dir.join("a.yaml"), "2").expect("write");
        assert!(matches!(next_change(&mut rx).await, WatchSignal::Changed(_)), "the re-created watcher works");

        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("joins");
    }
}
