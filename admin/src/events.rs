//! The change log: every change with its time, who made it, the weights
//! before and after, and why. Kept in memory for `GET /v1/events` and
//! appended to `events.jsonl` in the state directory as an audit trail.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::AdminError;

/// Events kept in memory; older ones remain in the audit file.
const KEPT: usize = 10_000;
const EVENTS_FILE: &str = "events.jsonl";

/// One change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Increasing id, for `?since=`.
    pub id: u64,
    /// RFC 3339 time.
    pub time: String,
    /// `admin`, `config-reload`, `rollout`, `startup`.
    pub who: String,
    /// `weights`, `config_reload`, `config_rejected`, `state_dropped`,
    /// `certificate_reload`, `certificate_rejected`.
    pub kind: String,
    /// The route, when one route changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Weights before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_weights: Option<BTreeMap<String, u32>>,
    /// Weights after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_weights: Option<BTreeMap<String, u32>>,
    /// Why.
    pub reason: String,
    /// For a fallback: the detector's evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
    /// The table version after the change (for an event that changed no
    /// table, the one live then); never below an earlier event's.
    pub version: u64,
}

/// An event before it has an id and a time.
pub struct NewEvent {
    /// See [`Event::who`].
    pub who: String,
    /// See [`Event::kind`].
    pub kind: &'static str,
    /// See [`Event::route`].
    pub route: Option<String>,
    /// See [`Event::old_weights`].
    pub old_weights: Option<BTreeMap<String, u32>>,
    /// See [`Event::new_weights`].
    pub new_weights: Option<BTreeMap<String, u32>>,
    /// See [`Event::reason`].
    pub reason: String,
    /// See [`Event::evidence`].
    pub evidence: Option<serde_json::Value>,
    /// See [`Event::version`].
    pub version: u64,
}

struct Log {
    recent: VecDeque<Event>,
    next_id: u64,
    /// The highest version recorded: an event recorded late (its version
    /// read before a change that another event recorded first) reports
    /// this instead, so versions in the log never go back.
    version: u64,
    file: Option<AuditFile>,
}

/// `events.jsonl` as appended to: rotated to `events.jsonl.1` when it
/// would pass its size limit, and reopened when something else (logrotate)
/// moved or removed it.
struct AuditFile {
    path: PathBuf,
    file: File,
    /// Bytes in `file`.
    size: u64,
    /// The size past which it is rotated.
    limit: u64,
}

/// The default size limit of the audit file; the rotated file is kept, so
/// the log takes at most twice this.
pub const DEFAULT_AUDIT_LIMIT: u64 = 16 << 20;

impl AuditFile {
    fn open(path: &Path, limit: u64) -> std::io::Result<AuditFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(AuditFile {
            path: path.to_path_buf(),
            file,
            size,
            limit,
        })
    }

    /// Appends and syncs one line.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if !self.is_in_place() {
            *self = AuditFile::open(&self.path, self.limit)?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.limit {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.sync_data()?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Whether the path still names the file this appends to.
    fn is_in_place(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
            _ => false,
        }
    }

    /// Renames the file to `events.jsonl.1` (replacing the one before) and
    /// starts a new one; both renames are durable before the next line.
    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        *self = AuditFile::open(&self.path, self.limit)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Where a rotated audit file goes.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

/// The whole lines of `text` that parse as events, in order.
fn parse_lines(text: &[u8]) -> impl Iterator<Item = Event> + '_ {
    text.split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Event>(line).ok())
}

/// The event log.
pub struct EventLog {
    log: Mutex<Log>,
    live: tokio::sync::broadcast::Sender<Event>,
}

impl EventLog {
    /// Opens the log, reading back the recent events of the audit file
    /// (and of the rotated one before it); `limit` is the size past which
    /// the file is rotated.
    pub fn open(dir: Option<&Path>, limit: u64) -> Result<EventLog, AdminError> {
        let mut recent = VecDeque::new();
        let mut version = 0;
        let mut keep = |event: Event| {
            version = version.max(event.version);
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(event);
        };
        let mut file = None;
        if let Some(dir) = dir {
            let path = dir.join(EVENTS_FILE);
            if let Ok(text) = std::fs::read(rotated(&path)) {
                parse_lines(&text).for_each(&mut keep);
            }
            let mut text = Vec::new();
            if let Ok(mut existing) = File::open(&path) {
                let _ = existing.read_to_end(&mut text);
            }
            // Whole lines only: a last line cut short by a crash is dropped
            // (its event was never acknowledged), not appended to. The
            // state file, not this log, is the source of truth.
            let whole = text
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            parse_lines(&text[..whole]).for_each(&mut keep);
            let storage = |what, source| AdminError::Storage {
                what,
                path: path.clone(),
                source,
            };
            if whole < text.len() {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|torn| {
                        torn.set_len(whole as u64)?;
                        torn.sync_data()
                    })
                    .map_err(|source| storage("cutting the torn last line of", source))?;
            }
            let opened =
                AuditFile::open(&path, limit).map_err(|source| storage("opening", source))?;
            file = Some(opened);
        }
        let next_id = recent.back().map_or(1, |e: &Event| e.id + 1);
        Ok(EventLog {
            log: Mutex::new(Log {
                recent,
                next_id,
                version,
                file,
            }),
            // A follower more than this many events behind is told it
            // lagged and can catch up with ?since=.
            live: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// The highest table version any event recorded.
    pub fn version(&self) -> u64 {
        self.log
            .lock()
            .expect("event log lock is never poisoned")
            .version
    }

    /// Records an event: appended and synced to the audit file, then kept.
    pub fn record(&self, new: NewEvent) -> Event {
        let mut log = self.log.lock().expect("event log lock is never poisoned");
        log.version = log.version.max(new.version);
        let event = Event {
            id: log.next_id,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            who: new.who,
            kind: new.kind.to_string(),
            route: new.route,
            old_weights: new.old_weights,
            new_weights: new.new_weights,
            reason: new.reason,
            evidence: new.evidence,
            version: log.version,
        };
        log.next_id += 1;
        if let Some(file) = &mut log.file {
            let mut line = serde_json::to_vec(&event).expect("event serializes");
            line.push(b'\n');
            if let Err(err) = file.append(&line) {
                tracing::warn!(error = %err, path = %file.path.display(), "cannot append to the audit log");
            }
        }
        if log.recent.len() == KEPT {
            log.recent.pop_front();
        }
        log.recent.push_back(event.clone());
        // Sent under the lock, so followers see events in id order.
        let _ = self.live.send(event.clone());
        tracing::info!(kind = %event.kind, route = ?event.route, version = event.version, reason = %event.reason, "event");
        event
    }

    /// Events from now on, for `GET /v1/events/stream`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Events with an id over `since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<Event> {
        let log = self.log.lock().expect("event log lock is never poisoned");
        log.recent
            .iter()
            .filter(|e| e.id > since)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(version: u64) -> NewEvent {
        NewEvent {
            who: "test".into(),
            kind: "weights",
            route: None,
            old_weights: None,
            new_weights: None,
            reason: String::new(),
            evidence: None,
            version,
        }
    }

    #[test]
    fn an_event_recorded_late_does_not_take_the_version_back() {
        let log = EventLog::open(None, DEFAULT_AUDIT_LIMIT).expect("open");
        assert_eq!(log.record(event(5)).version, 5);
        // Its version read before the change that recorded 5.
        assert_eq!(log.record(event(3)).version, 5);
        assert_eq!(log.record(event(6)).version, 6);
        assert_eq!(log.version(), 6);
    }
}
