//! Durable runtime state: the weights set through the API, per route, and
//! the table version. Written atomically (temp file, fsync, rename, fsync
//! the directory) before a change is acknowledged.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AdminError;
use crate::events::DEFAULT_AUDIT_LIMIT;
use crate::rollout::Rollout;

const STATE_FILE: &str = "state.json";
const FORMAT: u32 = 1;

/// What the API changed, on top of the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    /// File format, for future migrations.
    pub format: u32,
    /// The last table version handed out, so versions never go back.
    pub version: u64,
    /// Per route: the weights the API set.
    pub routes: BTreeMap<String, RouteState>,
}

/// One route's runtime state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteState {
    /// Pool name to basis points.
    pub weights: BTreeMap<String, u32>,
    /// The route's rollout, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The baseline since a rollout completed on its target (which then
    /// became the stable pool); else the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

/// Where the state lives; without a directory it lives only in memory.
pub struct StateStore {
    dir: Option<PathBuf>,
    /// The size past which the audit log is rotated.
    audit_limit: u64,
}

impl RuntimeState {
    /// What a state that parses may still get wrong: a rollout whose live
    /// step is not one of its steps, or whose steps do not make sense.
    fn check(&self) -> Result<(), String> {
        for (route, state) in &self.routes {
            if let Some(rollout) = &state.rollout {
                rollout
                    .check()
                    .map_err(|reason| format!("route {route:?}: rollout: {reason}"))?;
            }
        }
        Ok(())
    }
}

impl StateStore {
    /// Opens the state directory (creating it), and loads the state. A
    /// corrupt file stops here unless `reset`, which starts from nothing.
    pub fn open(dir: Option<&Path>, reset: bool) -> Result<(StateStore, RuntimeState), AdminError> {
        let Some(dir) = dir else {
            return Ok((
                StateStore {
                    dir: None,
                    audit_limit: DEFAULT_AUDIT_LIMIT,
                },
                RuntimeState::default(),
            ));
        };
        fs::create_dir_all(dir).map_err(|source| AdminError::Storage {
            what: "creating the state directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let store = StateStore {
            dir: Some(dir.to_path_buf()),
            audit_limit: DEFAULT_AUDIT_LIMIT,
        };
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => RuntimeState::default(),
            Err(source) => {
                return Err(AdminError::Storage {
                    what: "reading",
                    path,
                    source,
                })
            }
            Ok(bytes) => match serde_json::from_slice::<RuntimeState>(&bytes) {
                Ok(state) if state.format == FORMAT => match state.check() {
                    Ok(()) => state,
                    Err(reason) if !reset => return Err(AdminError::CorruptState { path, reason }),
                    Err(_) => {
                        tracing::warn!(path = %path.display(), "discarding the state file (--reset-state)");
                        RuntimeState::default()
                    }
                },
                Ok(state) if !reset => {
                    return Err(AdminError::CorruptState {
                        path,
                        reason: format!("unknown format {}", state.format),
                    })
                }
                Err(err) if !reset => {
                    return Err(AdminError::CorruptState {
                        path,
                        reason: err.to_string(),
                    })
                }
                _ => {
                    tracing::warn!(path = %path.display(), "discarding the state file (--reset-state)");
                    RuntimeState::default()
                }
            },
        };
        Ok((store, state))
    }

    /// The state directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Rotates the audit log (`events.jsonl`) once it would pass `bytes`.
    pub fn with_audit_limit(mut self, bytes: u64) -> StateStore {
        self.audit_limit = bytes;
        self
    }

    /// The size past which the audit log is rotated.
    pub fn audit_limit(&self) -> u64 {
        self.audit_limit
    }

    /// Writes `state` so that a crash at any point leaves either the old
    /// file or the new one, never a mix.
    pub fn persist(&self, state: &RuntimeState) -> Result<(), AdminError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut state = state.clone();
        state.format = FORMAT;
        let bytes = serde_json::to_vec_pretty(&state).expect("state serializes");
        write_atomically(&dir.join(STATE_FILE), &bytes)
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves either the
/// old file or the new one, never a mix: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let storage = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| AdminError::Storage { what, path, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(storage("creating", &temp))?;
    file.write_all(bytes).map_err(storage("writing", &temp))?;
    file.sync_all().map_err(storage("syncing", &temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(storage("renaming into place", path))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(storage("syncing the directory", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = temp_dir("round");
        let (store, state) = StateStore::open(Some(&dir), false).expect("open");
        assert_eq!(state, RuntimeState::default());
        let mut state = RuntimeState {
            format: FORMAT,
            version: 7,
            ..Default::default()
        };
        state.routes.insert(
            "web".into(),
            RouteState {
                weights: [("a".to_string(), 10_000)].into(),
                rollout: None,
                baseline: Some("a".into()),
            },
        );
        store.persist(&state).expect("persist");
        let (_, loaded) = StateStore::open(Some(&dir), false).expect("reopen");
        assert_eq!(loaded, state);
        assert!(!dir.join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_state_stops_the_start_unless_reset() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join(STATE_FILE), b"{\"format\": 1, \"vers").expect("write");
        let err = StateStore::open(Some(&dir), false).err().expect("refused");
        assert!(err.to_string().contains("is corrupt"), "{err}");
        let (_, state) = StateStore::open(Some(&dir), true).expect("reset");
        assert_eq!(state, RuntimeState::default());
    }
}
