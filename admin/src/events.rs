//! The change log: every change with its time, who made it, the weights
//! before and after, and why. Kept in memory for `GET /v1/events` and
//! appended to `events.jsonl` in the state directory as an audit trail.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
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
    /// The table version after the change.
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
    file: Option<File>,
}

/// The event log.
pub struct EventLog {
    log: Mutex<Log>,
    live: tokio::sync::broadcast::Sender<Event>,
}

impl EventLog {
    /// Opens the log, reading back the recent events of the audit file.
    pub fn open(dir: Option<&Path>) -> Result<EventLog, AdminError> {
        let mut recent = VecDeque::new();
        let mut file = None;
        if let Some(dir) = dir {
            let path = dir.join(EVENTS_FILE);
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
            for line in text[..whole].split(|&b| b == b'\n') {
                if let Ok(event) = serde_json::from_slice::<Event>(line) {
                    if recent.len() == KEPT {
                        recent.pop_front();
                    }
                    recent.push_back(event);
                }
            }
            let storage = |what, source| AdminError::Storage {
                what,
                path: path.clone(),
                source,
            };
            let opened = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| storage("opening", source))?;
            if whole < text.len() {
                opened
                    .set_len(whole as u64)
                    .and_then(|()| opened.sync_data())
                    .map_err(|source| storage("cutting the torn last line of", source))?;
            }
            file = Some(opened);
        }
        let next_id = recent.back().map_or(1, |e: &Event| e.id + 1);
        Ok(EventLog {
            log: Mutex::new(Log {
                recent,
                next_id,
                file,
            }),
            // A follower more than this many events behind is told it
            // lagged and can catch up with ?since=.
            live: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Records an event: appended and synced to the audit file, then kept.
    pub fn record(&self, new: NewEvent) -> Event {
        let mut log = self.log.lock().expect("event log lock is never poisoned");
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
            version: new.version,
        };
        log.next_id += 1;
        if let Some(file) = &mut log.file {
            let mut line = serde_json::to_vec(&event).expect("event serializes");
            line.push(b'\n');
            if let Err(err) = file.write_all(&line).and_then(|()| file.sync_data()) {
                tracing::warn!(error = %err, "cannot append to the audit log");
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
