//! Audit events: what happened to which key, as `tracing` events (target
//! `palisade_apikey::audit`) and through an [`AuditSink`] of your own.

use std::collections::VecDeque;
use std::fmt;

use parking_lot::Mutex;

use crate::key::KeyId;
use crate::verification::Denial;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditKind {
    /// A key was created.
    Created,
    /// A verification was refused.
    Denied(Denial),
    /// A key was rotated; `successor` replaces it.
    Rotated {
        /// The new key.
        successor: KeyId,
    },
    /// A rotated key was used during its grace period.
    GraceUse,
    /// A key was revoked.
    Revoked,
    /// A key's scopes were replaced.
    ScopesUpdated,
}

impl AuditKind {
    /// A short name: `created`, `denied`, `rotated`, `grace_use`, `revoked`, `scopes_updated`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Denied(_) => "denied",
            Self::Rotated { .. } => "rotated",
            Self::GraceUse => "grace_use",
            Self::Revoked => "revoked",
            Self::ScopesUpdated => "scopes_updated",
        }
    }
}

/// One audit event. Never holds a key's secret: only its public id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The key, when known (a malformed key has none).
    pub key_id: Option<KeyId>,
    /// The key's owner, when known.
    pub owner: Option<String>,
    /// When (microseconds since the Unix epoch).
    pub at: u64,
}

/// Where audit events go besides `tracing`: a database table, a queue, a SIEM. Called
/// inline on the request path, so it must not block: hand the event to a channel or a
/// buffer and write it elsewhere.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Take one event.
    fn record(&self, event: &AuditEvent);
}

/// An [`AuditSink`] that keeps the last `capacity` events in memory (tests, admin pages).
#[derive(Debug)]
pub struct MemoryAuditSink {
    capacity: usize,
    events: Mutex<VecDeque<AuditEvent>>,
}

impl MemoryAuditSink {
    /// Keep the last `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().iter().cloned().collect()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, event: &AuditEvent) {
        let mut events = self.events.lock();
        if events.len() == self.capacity {
            events.pop_front();
        }
        if self.capacity > 0 {
            events.push_back(event.clone());
        }
    }
}
