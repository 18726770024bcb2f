//! Hot reload: the config file is watched, and re-read when it changes.
//!
//! The directory is watched rather than the file, because editors and
//! config managers replace a file by renaming a new one over it, which a
//! watch on the old inode would miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::control::ControlPlane;

/// Changes closer together than this are one change: an editor's save is
/// often a truncate and a write, or a write and a rename.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches `path` and reloads it into `plane` on every change, on a thread
/// of its own. Returns an error if the watch cannot be set up.
pub fn watch_config(plane: Arc<ControlPlane>, path: &Path) -> notify::Result<()> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("switchyard-watch".into())
        .spawn(move || {
            // The watcher lives as long as this thread.
            let _watcher = watcher;
            while let Ok(event) = rx.recv() {
                let touches = match &event {
                    Ok(event) => event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == path.file_name()),
                    Err(err) => {
                        tracing::warn!(error = %err, "config watch error");
                        false
                    }
                };
                if !touches {
                    continue;
                }
                // Let the writer finish, and fold the burst into one reload.
                while rx.recv_timeout(SETTLE).is_ok() {}
                match runtime.block_on(plane.reload(&path, "config-reload")) {
                    Ok(Some(version)) => tracing::info!(version, "config reloaded"),
                    Ok(None) => {}
                    Err(_) => {} // recorded as an event by reload()
                }
            }
        })?;
    Ok(())
}
