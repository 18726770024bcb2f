//! Hot reload: the config file is watched, and re-read when it changes.
//!
//! The directory is watched rather than the file, because editors and
//! config managers replace a file by renaming a new one over it, which a
//! watch on the old inode would miss.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use switchyard_proxy::tls::TlsTerminator;

use crate::control::ControlPlane;
use crate::events::NewEvent;

/// Changes closer together than this are one change: an editor's save is
/// often a truncate and a write, or a write and a rename.
const SETTLE: Duration = Duration::from_millis(100);

/// A change is reloaded at most this long after it, however busy its
/// directory (a log written beside the files must not hold a reload off).
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// Takes the events that follow one until [`SETTLE`] passes without any,
/// or [`SETTLE_MAX`] since the first; each goes to `fold`.
fn settle<T>(rx: &Receiver<T>, mut fold: impl FnMut(T)) {
    let until = Instant::now() + SETTLE_MAX;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match rx.recv_timeout(SETTLE.min(left)) {
            Ok(more) => fold(more),
            Err(_) => return,
        }
    }
}

/// `file` as named (made absolute) and where its symlinks lead.
fn named_and_target(file: &Path) -> [PathBuf; 2] {
    let named = std::env::current_dir()
        .map(|cwd| cwd.join(file))
        .unwrap_or_else(|_| file.to_path_buf());
    let target = std::fs::canonicalize(file).unwrap_or_else(|_| named.clone());
    [named, target]
}

fn parent(file: &Path) -> PathBuf {
    file.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Whether an event can mean new contents. Opening or reading a file is
/// not a change; notify reports opens, and the reload's own read of the
/// file would otherwise set off the next reload, for ever.
fn is_change(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode};
    use notify::EventKind;
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Where a change to the config file `named` can show: the directories to
/// watch and the names in them that matter. The file's own directory and
/// the one its symlinks lead to, and, for each directory on the way that
/// is a symlink, the directory holding that symlink (a release switch
/// swaps `current -> releases/2` there, Capistrano-style).
fn config_watch_points(named: &Path, target: &Path) -> (Vec<PathBuf>, Vec<std::ffi::OsString>) {
    let mut dirs = vec![parent(named), parent(target)];
    let mut names: Vec<std::ffi::OsString> = [named, target]
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect();
    for ancestor in named.ancestors().skip(1) {
        let is_link = std::fs::symlink_metadata(ancestor).is_ok_and(|m| m.is_symlink());
        if let (true, Some(name)) = (is_link, ancestor.file_name()) {
            dirs.push(parent(ancestor));
            names.push(name.to_owned());
        }
    }
    dirs.sort();
    dirs.dedup();
    (dirs, names)
}

/// Watches `path` and reloads it into `plane` on every change, on a thread
/// of its own. Returns an error if the watch cannot be set up.
pub fn watch_config(plane: Arc<ControlPlane>, path: &Path) -> notify::Result<()> {
    // The file is read by the name it was given, so symlinks are followed
    // afresh each time; both that name's directory and the one its
    // symlinks lead to are watched, as for certificates (a Kubernetes
    // ConfigMap swaps a `..data` symlink and deletes the old target).
    let [named, target] = named_and_target(path);
    let (mut dirs, mut names) = config_watch_points(&named, &target);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("switchyard-watch".into())
        .spawn(move || {
            while let Ok(event) = rx.recv() {
                let touches = match &event {
                    Ok(event) => {
                        is_change(event)
                            && event
                                .paths
                                .iter()
                                .filter_map(|p| p.file_name())
                                .any(|name| {
                                    names.iter().any(|n| n == name)
                                        || name.to_string_lossy().starts_with("..")
                                })
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "config watch error");
                        false
                    }
                };
                if !touches {
                    continue;
                }
                // Let the writer finish, and fold the burst into one reload.
                settle(&rx, |_| {});
                // A swapped symlink leads somewhere new: watch there from
                // now on (a watch follows the directory it was set on, not
                // the name). Set again before the reload reads the file,
                // so a change in between is read by it.
                let [_, target] = named_and_target(&named);
                let (now_dirs, now_names) = config_watch_points(&named, &target);
                for dir in &dirs {
                    let _ = watcher.unwatch(dir);
                }
                for dir in &now_dirs {
                    if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %err, "config watch lost a directory");
                    }
                }
                (dirs, names) = (now_dirs, now_names);
                match runtime.block_on(plane.reload(&named, "config-reload")) {
                    Ok(Some(version)) => tracing::info!(version, "config reloaded"),
                    Ok(None) => {}
                    Err(_) => {} // recorded as an event by reload()
                }
            }
        })?;
    Ok(())
}

/// Watches the certificate and key files of `terminators` and reloads a
/// terminator when one of its files changes: new handshakes get the new
/// certificate, open connections keep theirs. A file that does not load
/// or check leaves the old certificate in use, with a logged error and a
/// `certificate_rejected` event. The watch lasts as long as the returned
/// [`CertificateWatch`].
pub fn watch_certificates(
    plane: Arc<ControlPlane>,
    terminators: Vec<Arc<TlsTerminator>>,
) -> notify::Result<CertificateWatch> {
    if terminators.is_empty() {
        return Ok(CertificateWatch { _watcher: None });
    }
    // Directories are watched (see the module comment); any change in one
    // reloads the terminators with a file there. A reload that finds the
    // same certificates changes nothing and records nothing, so unrelated
    // files in the directory and Kubernetes' symlink swaps are both fine.
    // Both the directory a file is named in and the one its symlinks lead
    // to: certbot writes new files beside the old targets (`archive/`),
    // and Kubernetes swaps a `..data` symlink in the named directory and
    // deletes the old target directory, whose watch ends with it.
    let directories = |file: &Path| named_and_target(file).map(|f| parent(&f));
    let watched: Vec<(Arc<TlsTerminator>, Vec<PathBuf>)> = terminators
        .into_iter()
        .map(|terminator| {
            let mut dirs: Vec<PathBuf> = terminator.files().flat_map(directories).collect();
            dirs.sort();
            dirs.dedup();
            (terminator, dirs)
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    let mut all_dirs: Vec<&PathBuf> = watched.iter().flat_map(|(_, dirs)| dirs).collect();
    all_dirs.sort();
    all_dirs.dedup();
    for dir in all_dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    std::thread::Builder::new()
        .name("switchyard-cert-watch".into())
        .spawn(move || {
            // Ends when the watcher is dropped: its events' sender goes too.
            // The directories with a change, each once.
            let mut changed: Vec<PathBuf> = Vec::new();
            let note =
                |changed: &mut Vec<PathBuf>, event: notify::Result<notify::Event>| match event {
                    Ok(event) if !is_change(&event) => {}
                    Ok(event) => {
                        let dirs = event.paths.iter().filter_map(|p| p.parent());
                        for dir in dirs.map(Path::to_path_buf) {
                            if !changed.contains(&dir) {
                                changed.push(dir);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "certificate watch error"),
                };
            while let Ok(event) = rx.recv() {
                note(&mut changed, event);
                if changed.is_empty() {
                    continue;
                }
                // Let the writer finish (a certificate and its key are
                // often written one after the other), folding the burst.
                settle(&rx, |more| note(&mut changed, more));
                for (terminator, dirs) in &watched {
                    if dirs.iter().any(|dir| changed.contains(dir)) {
                        reload_certificates(&plane, terminator);
                    }
                }
                changed.clear();
            }
        })?;
    Ok(CertificateWatch {
        _watcher: Some(watcher),
    })
}

/// A running certificate watch; dropping it ends the watch and its thread.
pub struct CertificateWatch {
    _watcher: Option<notify::RecommendedWatcher>,
}

fn reload_certificates(plane: &ControlPlane, terminator: &TlsTerminator) {
    let (kind, reason) = match terminator.reload() {
        Ok(false) => return,
        Ok(true) => {
            let names: Vec<String> = terminator
                .summaries()
                .iter()
                .map(|s| format!("{} ({} days left)", s.cert_file.display(), s.days_left()))
                .collect();
            tracing::info!(listener = %terminator.label(), "certificates reloaded");
            (
                "certificate_reload",
                format!(
                    "listener {}: loaded {}",
                    terminator.label(),
                    names.join(", ")
                ),
            )
        }
        Err(err) => {
            let reason = error_chain(&err);
            tracing::error!(listener = %terminator.label(), error = %reason, "certificate reload refused; the old certificates stay in use");
            (
                "certificate_rejected",
                format!(
                    "listener {}: {reason}; the old certificates stay in use",
                    terminator.label()
                ),
            )
        }
    };
    plane.events().record(NewEvent {
        who: "certificate-reload".to_string(),
        kind,
        route: None,
        old_weights: None,
        new_weights: None,
        reason,
        evidence: None,
        version: plane.version(),
    });
}

/// An error and its sources, `: `-separated, for a one-line reason.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
