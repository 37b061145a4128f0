//! The per-instance vector index of a shared backend: rows carry their expiry and are
//! pruned as time passes, and a bounded budget of rows is shared fairly between tenants.
//! Pure logic, no I/O; the Redis store feeds it from its event stream.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::Result;
use crate::index::{Neighbor, VectorIndex};
use crate::key::{EntryId, Partition, ScopeId, Tenant};

/// Where a row lives: its partition, scope and embedder version.
pub(crate) type IndexKey = (Partition, ScopeId, Arc<str>);

#[derive(Debug)]
struct Row {
    key: IndexKey,
    expires_at_ms: u64,
}

#[derive(Debug, Default)]
struct TenantRows {
    /// `(expiry, id)` of this tenant's rows, soonest first.
    by_expiry: BTreeSet<(u64, EntryId)>,
}

/// Vectors of many partitions under one budget of rows.
///
/// - **Expiry**: every row carries its entry's expiry (the cache's clock). Time is the
///   latest "now" the index has been told (inserts carry their creation time, searches the
///   query's time); whenever it moves, rows that expired are dropped, soonest first, so an
///   expired row never holds a slot of the budget.
/// - **Fair share**: when the budget is full, the new row's tenant takes a slot from the
///   tenant holding the most rows if it holds fewer than an even share itself, else from
///   its own rows; either way the row that expires soonest goes. One busy tenant can fill
///   the index only while nobody else needs it.
///
/// Every operation is O(log n) besides the vector index's own cost.
#[derive(Debug)]
pub(crate) struct LocalIndex {
    max_rows: usize,
    now_ms: u64,
    indexes: HashMap<IndexKey, VectorIndex>,
    rows: HashMap<EntryId, Row>,
    by_expiry: BTreeSet<(u64, EntryId)>,
    tenants: HashMap<Tenant, TenantRows>,
    /// `(rows, tenant)`, to find the tenant holding the most.
    by_size: BTreeSet<(usize, Tenant)>,
}

impl LocalIndex {
    pub(crate) fn new(max_rows: usize) -> Self {
        Self {
            max_rows: max_rows.max(1),
            now_ms: 0,
            indexes: HashMap::new(),
            rows: HashMap::new(),
            by_expiry: BTreeSet::new(),
            tenants: HashMap::new(),
            by_size: BTreeSet::new(),
        }
    }

    /// Rows held.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Rows held for one tenant.
    #[cfg(test)]
    pub(crate) fn tenant_len(&self, tenant: &Tenant) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.by_expiry.len())
    }

    /// Move time forward (never back) and drop what expired by then.
    pub(crate) fn advance(&mut self, now_ms: u64) {
        if now_ms <= self.now_ms {
            return;
        }
        self.now_ms = now_ms;
        while let Some(&(expires, id)) = self.by_expiry.first() {
            if expires > now_ms {
                break;
            }
            self.remove(&id);
        }
    }

    /// Add (or replace) a row. `now_ms` is the entry's creation time, which moves the
    /// index's time forward. A row that has already expired is not added.
    ///
    /// # Errors
    /// A vector error (dimension, `NaN`, zero); the index is unchanged then.
    pub(crate) fn insert(
        &mut self,
        key: IndexKey,
        id: EntryId,
        vector: &[f32],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<()> {
        crate::embed::check_vector(vector, vector.len())?;
        self.advance(now_ms);
        self.remove(&id);
        if expires_at_ms <= self.now_ms {
            return Ok(());
        }
        let tenant = key.0.tenant.clone();
        if self.rows.len() >= self.max_rows {
            self.make_room(&tenant);
        }
        let index = self
            .indexes
            .entry(key.clone())
            .or_insert_with(|| VectorIndex::new(vector.len()));
        if let Err(e) = index.insert(id, vector) {
            if index.is_empty() {
                self.indexes.remove(&key);
            }
            return Err(e);
        }
        self.rows.insert(id, Row { key, expires_at_ms });
        self.by_expiry.insert((expires_at_ms, id));
        let rows = self.tenants.entry(tenant.clone()).or_default();
        let before = rows.by_expiry.len();
        rows.by_expiry.insert((expires_at_ms, id));
        self.resize(&tenant, before, before + 1);
        Ok(())
    }

    /// Drop one row of the tenant that should give one up.
    fn make_room(&mut self, newcomer: &Tenant) {
        let held = self.tenants.get(newcomer).map_or(0, |t| t.by_expiry.len());
        let sharing = self.tenants.len() + usize::from(held == 0);
        let fair = self.max_rows / sharing.max(1);
        let victim = if held < fair {
            self.by_size.last().map(|(_, t)| t.clone())
        } else {
            Some(newcomer.clone())
        };
        let soonest = victim
            .and_then(|t| self.tenants.get(&t))
            .and_then(|rows| rows.by_expiry.first().copied())
            .or_else(|| self.by_expiry.first().copied());
        if let Some((_, id)) = soonest {
            self.remove(&id);
        }
    }

    fn resize(&mut self, tenant: &Tenant, before: usize, after: usize) {
        if before > 0 {
            self.by_size.remove(&(before, tenant.clone()));
        }
        if after > 0 {
            self.by_size.insert((after, tenant.clone()));
        } else {
            self.tenants.remove(tenant);
        }
    }

    /// Remove a row; returns whether it was there.
    pub(crate) fn remove(&mut self, id: &EntryId) -> bool {
        let Some(row) = self.rows.remove(id) else {
            return false;
        };
        self.by_expiry.remove(&(row.expires_at_ms, *id));
        if let Some(index) = self.indexes.get_mut(&row.key) {
            index.remove(id);
            if index.is_empty() {
                self.indexes.remove(&row.key);
            }
        }
        let tenant = row.key.0.tenant;
        if let Some(rows) = self.tenants.get_mut(&tenant) {
            let before = rows.by_expiry.len();
            rows.by_expiry.remove(&(row.expires_at_ms, *id));
            let after = rows.by_expiry.len();
            self.resize(&tenant, before, after);
        }
        true
    }

    /// Drop every row.
    pub(crate) fn clear(&mut self) {
        self.indexes.clear();
        self.rows.clear();
        self.by_expiry.clear();
        self.tenants.clear();
        self.by_size.clear();
    }

    /// The nearest live rows of one partition (see [`VectorIndex::search`]), after moving
    /// time to `now_ms`. `None` when the partition has no rows.
    ///
    /// # Errors
    /// A vector error for a bad query.
    pub(crate) fn search(
        &mut self,
        key: &IndexKey,
        query: &[f32],
        limit: usize,
        min_similarity: f32,
        now_ms: u64,
    ) -> Result<Option<Vec<Neighbor>>> {
        self.advance(now_ms);
        match self.indexes.get(key) {
            Some(index) => index.search(query, limit, min_similarity).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(tenant: &str) -> IndexKey {
        (
            Partition::new(tenant, "ns").unwrap(),
            ScopeId::from_bytes([0; 16]),
            Arc::from("e"),
        )
    }

    fn id(n: u32) -> EntryId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        EntryId::from_bytes(b)
    }

    fn vector(n: u32) -> Vec<f32> {
        let mut v = vec![0.1f32; 4];
        v[(n % 4) as usize] = 1.0 + n as f32;
        v
    }

    #[test]
    fn a_busy_tenant_cannot_keep_others_out() {
        let mut index = LocalIndex::new(10);
        for n in 0..10 {
            index
                .insert(key("busy"), id(n), &vector(n), 1_000 + u64::from(n), 0)
                .unwrap();
        }
        assert_eq!(index.tenant_len(&Tenant::new("busy").unwrap()), 10);
        index
            .insert(key("quiet"), id(100), &vector(1), 5_000, 1)
            .unwrap();
        assert_eq!(index.len(), 10);
        assert_eq!(index.tenant_len(&Tenant::new("quiet").unwrap()), 1);
        // The busy tenant's soonest-expiring row made room.
        assert!(!index.rows.contains_key(&id(0)));
        // At its fair share (5 of 10), the quiet tenant replaces its own rows.
        for n in 101..120 {
            index
                .insert(key("quiet"), id(n), &vector(n), 5_000 + u64::from(n), 2)
                .unwrap();
        }
        assert_eq!(index.tenant_len(&Tenant::new("quiet").unwrap()), 5);
        assert_eq!(index.tenant_len(&Tenant::new("busy").unwrap()), 5);
    }

    #[test]
    fn expired_rows_go_when_time_moves() {
        let mut index = LocalIndex::new(100);
        for n in 0..50 {
            index.insert(key("t"), id(n), &vector(n), 1_000, 0).unwrap();
        }
        index
            .insert(key("t"), id(99), &vector(9), 9_000, 500)
            .unwrap();
        assert_eq!(index.len(), 51);
        let found = index
            .search(&key("t"), &vector(1), 4, -1.0, 1_000)
            .unwrap()
            .unwrap();
        assert!(found.iter().all(|n| n.id == id(99)));
        assert_eq!(index.len(), 1);
        // Already expired when it arrives (a late stream event): not added.
        index.insert(key("t"), id(7), &vector(7), 900, 0).unwrap();
        assert_eq!(index.len(), 1);
        index.advance(10_000);
        assert_eq!(index.len(), 0);
        assert!(index.indexes.is_empty() && index.tenants.is_empty() && index.by_size.is_empty());
    }

    proptest! {
        /// Whatever the sequence of inserts, removals and clock moves: the budget holds, no
        /// expired row stays, the books agree, and a tenant below its fair share always
        /// gets its row in.
        #[test]
        fn budget_expiry_and_books_hold(
            ops in proptest::collection::vec((0u8..3, 0u32..40, 0u8..5, 1u64..50), 1..300),
            max in 1usize..20,
        ) {
            let tenants = ["a", "b", "c", "d", "e"];
            let mut index = LocalIndex::new(max);
            let mut now = 0u64;
            for (op, n, t, dt) in ops {
                match op {
                    0 | 1 => {
                        let tenant = Tenant::new(tenants[t as usize]).unwrap();
                        let held = index.tenant_len(&tenant);
                        let sharing = index.tenants.len() + usize::from(held == 0);
                        let below_fair = held < max / sharing;
                        index.insert(key(tenants[t as usize]), id(n), &vector(n), now + dt, now).unwrap();
                        if below_fair || index.len() < max {
                            prop_assert!(index.rows.contains_key(&id(n)));
                        }
                    }
                    _ => {
                        now += dt;
                        index.advance(now);
                    }
                }
                prop_assert!(index.len() <= max);
                prop_assert!(index.rows.values().all(|r| r.expires_at_ms > index.now_ms));
                prop_assert_eq!(index.by_expiry.len(), index.len());
                let per_tenant: usize = index.tenants.values().map(|t| t.by_expiry.len()).sum();
                prop_assert_eq!(per_tenant, index.len());
                prop_assert_eq!(index.by_size.len(), index.tenants.len());
                let indexed: usize = index.indexes.values().map(VectorIndex::len).sum();
                prop_assert_eq!(indexed, index.len());
            }
        }
    }
}
