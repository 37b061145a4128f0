//! The in-memory target, for tests of the engine and of code that runs migrations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::ledger::{AppVersion, AuditEntry, Lease, LeaseGrant, LeaseInfo, LeaseState, LedgerRow};
use crate::migration::ScriptKind;
use crate::store::{Backup, BackupScope, ScriptResult, Step, Store};

/// At most this many audit entries are kept (the oldest are dropped).
const MAX_AUDIT: usize = 10_000;

#[derive(Debug, Default, Clone)]
struct State {
    data: BTreeMap<String, String>,
    ledger: BTreeMap<u64, LedgerRow>,
    lease: LeaseState,
    audit: Vec<AuditEntry>,
    apps: BTreeMap<String, AppVersion>,
}

/// A target in this process's memory: a key-value data set that migrations change, plus
/// the ledger, audit log, lease and app registry. Clones share the same state, so two
/// [`Migrator`](crate::Migrator)s on clones behave like two deployers on one database.
///
/// Its migrations are scripts of one command per line (any [`ScriptKind`]):
/// `SET key value…`, `DEL key`, `FAIL message` (fails the migration there; useful to test
/// failure paths), `--` comments. A transactional script applies all its lines or none; a
/// `no-transaction` one applies line by line, so a `FAIL` leaves the lines before it done.
///
/// The lease runs the pure [`LeaseState`] machine on the store's [`Clock`]. It implements
/// [`Backup`] too (a JSON copy of the data set or of the declared keys).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store on `clock` (a [`FakeClock`](crate::FakeClock) in tests).
    pub fn with_clock(clock: impl Clock + 'static) -> Self {
        Self {
            clock: Arc::new(clock),
            state: Arc::default(),
        }
    }

    /// The value of a data key.
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().data.get(key).cloned()
    }

    /// The whole data set.
    pub fn data(&self) -> BTreeMap<String, String> {
        self.lock().data.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fenced(&self, lease: &Lease) -> Result<std::sync::MutexGuard<'_, State>> {
        let now = self.clock.now_micros();
        let state = self.lock();
        if state.lease.is_current(lease.token, now) {
            Ok(state)
        } else {
            Err(Error::LeaseLost { token: lease.token })
        }
    }
}

/// Apply one line of the memory script language.
fn apply_line(data: &mut BTreeMap<String, String>, line: &str) -> ScriptResult {
    let line = line.trim();
    if line.is_empty() || line.starts_with("--") {
        return Ok(());
    }
    let mut words = line.splitn(3, char::is_whitespace);
    let command = words.next().unwrap_or_default();
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim();
    match command.to_ascii_uppercase().as_str() {
        "SET" if !key.is_empty() => {
            data.insert(key.to_owned(), rest.to_owned());
            Ok(())
        }
        "DEL" if !key.is_empty() => {
            data.remove(key);
            Ok(())
        }
        "FAIL" => Err(format!("FAIL {key} {rest}").trim().to_owned().into()),
        _ => Err(format!("unknown memory script line {line:?}").into()),
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn supports(&self, _kind: ScriptKind) -> bool {
        true
    }

    async fn prepare(&self) -> Result<()> {
        Ok(())
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<LeaseGrant> {
        let now = self.clock.now_micros();
        Ok(self.lock().lease.acquire(holder, now, ttl))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let now = self.clock.now_micros();
        Ok(self.lock().lease.renew(lease.token, now, ttl))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let now = self.clock.now_micros();
        self.lock().lease.release(lease.token, now);
        Ok(())
    }

    async fn lease_info(&self) -> Result<Option<LeaseInfo>> {
        let now = self.clock.now_micros();
        Ok(self.lock().lease.info(now))
    }

    async fn ledger(&self) -> Result<Vec<LedgerRow>> {
        Ok(self.lock().ledger.values().cloned().collect())
    }

    async fn record(
        &self,
        lease: &Lease,
        rows: &[LedgerRow],
        delete: &[u64],
        audit: &[AuditEntry],
    ) -> Result<()> {
        let mut state = self.fenced(lease)?;
        for row in rows {
            state.ledger.insert(row.version, row.clone());
        }
        for v in delete {
            state.ledger.remove(v);
        }
        push_audit(&mut state, audit);
        Ok(())
    }

    async fn run_step(&self, lease: &Lease, step: &Step<'_>) -> Result<ScriptResult> {
        let mut state = self.fenced(lease)?;
        let outcome = if step.transactional {
            let mut copy = state.data.clone();
            let r = step
                .script
                .lines()
                .try_for_each(|l| apply_line(&mut copy, l));
            if r.is_ok() {
                state.data = copy;
            }
            r
        } else {
            let data = &mut state.data;
            step.script.lines().try_for_each(|l| apply_line(data, l))
        };
        if outcome.is_ok() {
            match &step.record {
                Some(row) => {
                    state.ledger.insert(row.version, row.clone());
                }
                None => {
                    state.ledger.remove(&step.version);
                }
            }
            push_audit(&mut state, std::slice::from_ref(&step.audit));
        }
        Ok(outcome)
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let state = self.lock();
        let skip = state.audit.len().saturating_sub(limit);
        Ok(state.audit[skip..].to_vec())
    }

    async fn register_app(&self, app: &AppVersion) -> Result<()> {
        self.lock().apps.insert(app.version.clone(), app.clone());
        Ok(())
    }

    async fn apps(&self) -> Result<Vec<AppVersion>> {
        Ok(self.lock().apps.values().cloned().collect())
    }
}

fn push_audit(state: &mut State, audit: &[AuditEntry]) {
    state.audit.extend_from_slice(audit);
    if state.audit.len() > MAX_AUDIT {
        let excess = state.audit.len() - MAX_AUDIT;
        state.audit.drain(..excess);
    }
}

#[async_trait]
impl Backup for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn dump(&self, scope: &BackupScope) -> Result<Vec<u8>> {
        let state = self.lock();
        let saved: BTreeMap<&String, &String> = match scope {
            BackupScope::Objects(keys) => state
                .data
                .iter()
                .filter(|(k, _)| keys.contains(k))
                .collect(),
            _ => state.data.iter().collect(),
        };
        serde_json::to_vec(&saved).map_err(|e| Error::Backup(e.to_string()))
    }

    async fn restore(&self, dump: &[u8], scope: &BackupScope) -> Result<()> {
        let saved: BTreeMap<String, String> = serde_json::from_slice(dump)
            .map_err(|e| Error::Backup(format!("not a memory dump: {e}")))?;
        let mut state = self.lock();
        match scope {
            BackupScope::Objects(keys) => {
                for k in keys {
                    match saved.get(k) {
                        Some(v) => state.data.insert(k.clone(), v.clone()),
                        None => state.data.remove(k),
                    };
                }
            }
            _ => state.data = saved,
        }
        Ok(())
    }
}
