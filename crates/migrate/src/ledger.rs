//! What a target records: ledger rows, audit entries, the lease and the registered app
//! versions. Plain values, shared by every [`Store`](crate::Store).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::phase::Phase;

/// The state of one migration in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RowState {
    /// Recorded before its backup was taken; not started.
    Pending,
    /// A non-transactional migration that started and has not finished (or whose
    /// migrator died): retried, with its leftovers cleaned, by the next `up`.
    Running,
    /// It failed; the error is in the row. Retried by the next `up`.
    Failed,
    /// It ran to the end.
    Applied,
    /// Marked applied by `baseline` without running (the database already had it).
    Baseline,
}

impl RowState {
    /// The ledger spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Applied => "applied",
            Self::Baseline => "baseline",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "failed" => Self::Failed,
            "applied" => Self::Applied,
            "baseline" => Self::Baseline,
            _ => return None,
        })
    }

    /// Applied or baselined: the database has it.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Applied | Self::Baseline)
    }
}

impl fmt::Display for RowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LedgerRow {
    /// The migration's version.
    pub version: u64,
    /// Its name.
    pub name: String,
    /// The checksum of the up script that ran (or was baselined / re-stamped).
    pub checksum: String,
    /// Where it stands.
    pub state: RowState,
    /// Its expand/contract phase.
    pub phase: Phase,
    /// When it started (microseconds since the Unix epoch, the target's clock).
    pub started_at_us: u64,
    /// When it finished, if it did.
    pub finished_at_us: Option<u64>,
    /// Who ran it (the migrator's holder name: host, process, label).
    pub applied_by: String,
    /// The backup taken before it, if any.
    pub backup_id: Option<String>,
    /// The error of a failed run.
    pub error: Option<String>,
}

impl LedgerRow {
    /// A row for `version` in `state`, started now.
    pub fn new(
        version: u64,
        name: &str,
        checksum: &str,
        state: RowState,
        phase: Phase,
        applied_by: &str,
    ) -> Self {
        Self {
            version,
            name: name.to_owned(),
            checksum: checksum.to_owned(),
            state,
            phase,
            started_at_us: 0,
            finished_at_us: None,
            applied_by: applied_by.to_owned(),
            backup_id: None,
            error: None,
        }
    }

    /// How long it ran.
    pub fn duration(&self) -> Option<Duration> {
        self.finished_at_us
            .map(|f| Duration::from_micros(f.saturating_sub(self.started_at_us)))
    }
}

/// One audited state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// When (microseconds since the Unix epoch; filled in by the target).
    pub at_us: u64,
    /// Who (the migrator's holder name).
    pub actor: String,
    /// What: `apply`, `revert`, `fail`, `baseline`, `repair`, `restore`, `backup`,
    /// `cleanup`, `register_app`.
    pub action: String,
    /// The migration concerned, if any.
    pub version: Option<u64>,
    /// Details (old and new checksum, error text, backup id).
    pub detail: String,
}

impl AuditEntry {
    /// An entry stamped by the target when written.
    pub fn new(actor: &str, action: &str, version: Option<u64>, detail: impl Into<String>) -> Self {
        Self {
            at_us: 0,
            actor: actor.to_owned(),
            action: action.to_owned(),
            version,
            detail: detail.into(),
        }
    }
}

/// A lease held by this migrator. Every write a migrator makes under it checks that its
/// `token` is still the current one (fencing), so a migrator whose lease expired while it
/// was paused can write nothing after another one took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token: grows by one with every grant, never reused.
    pub token: u64,
    /// Who holds it.
    pub holder: String,
    /// How long it lasts without renewal.
    pub ttl: Duration,
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseGrant {
    /// The lease is ours.
    Acquired(Lease),
    /// Someone else holds it.
    Held {
        /// Who.
        holder: String,
        /// For how much longer unless renewed.
        expires_in: Duration,
    },
}

/// Who holds the lease now, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The holder's name.
    pub holder: String,
    /// The current fencing token.
    pub token: u64,
    /// Remaining time, in milliseconds.
    pub expires_in_ms: u64,
}

/// An app version registered with the target, for expand/contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AppVersion {
    /// The app's version label (`"2024.06.01-3"`, a git hash).
    pub version: String,
    /// The newest migration it was built against.
    pub built_against: u64,
    /// Whether instances of it still serve traffic.
    pub live: bool,
}

/// The pure lease machine that the memory target runs directly and the PostgreSQL SQL and
/// Redis Lua mirror statement by statement: one row with holder, token and expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// The holder, `None` when released.
    pub holder: Option<String>,
    /// The last token granted.
    pub token: u64,
    /// When the lease ends (microseconds).
    pub expires_at: u64,
}

impl LeaseState {
    /// Grant the lease to `holder` if it is free or expired; the token grows by one.
    pub fn acquire(&mut self, holder: &str, now: u64, ttl: Duration) -> LeaseGrant {
        match &self.holder {
            Some(h) if self.expires_at > now => LeaseGrant::Held {
                holder: h.clone(),
                expires_in: Duration::from_micros(self.expires_at - now),
            },
            _ => {
                self.token = self.token.saturating_add(1);
                self.holder = Some(holder.to_owned());
                self.expires_at = now.saturating_add(micros(ttl));
                LeaseGrant::Acquired(Lease {
                    token: self.token,
                    holder: holder.to_owned(),
                    ttl,
                })
            }
        }
    }

    /// Whether `token` is current and unexpired.
    pub fn is_current(&self, token: u64, now: u64) -> bool {
        self.holder.is_some() && self.token == token && self.expires_at > now
    }

    /// Extend a current lease; `false` when it was lost.
    pub fn renew(&mut self, token: u64, now: u64, ttl: Duration) -> bool {
        if self.is_current(token, now) {
            self.expires_at = now.saturating_add(micros(ttl));
            true
        } else {
            false
        }
    }

    /// Give a current lease back (the token is kept, so it is never granted twice).
    pub fn release(&mut self, token: u64, now: u64) {
        if self.token == token && self.holder.is_some() {
            self.holder = None;
            self.expires_at = now;
        }
    }

    /// Who holds it now, if anyone.
    pub fn info(&self, now: u64) -> Option<LeaseInfo> {
        match &self.holder {
            Some(h) if self.expires_at > now => Some(LeaseInfo {
                holder: h.clone(),
                token: self.token,
                expires_in_ms: (self.expires_at - now) / 1000,
            }),
            _ => None,
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
