//! What a full shard forgets: first every key whose states have turned equivalent to fresh
//! ones (which admits nothing extra), then the eighth that holds least.

use super::table::Shard;

impl Shard {
    /// Keep the entries for which `keep(expires_at, holds)` (at `now`) says so; drop the
    /// groups left empty.
    fn retain(&mut self, now: u64, mut keep: impl FnMut(u64, u64) -> bool) {
        self.groups.retain(|g| {
            g.retain(now, &mut keep);
            g.len() > 0
        });
    }

    pub(super) fn purge_expired(&mut self, now: u64) {
        self.retain(now, |at, _| at > now);
    }

    /// Drop every expired entry; if the shard is still full, drop the eighth whose states
    /// hold least (soonest expiring among equals): what forgetting gives back least. A key
    /// that has spent its quota is the last one forgotten.
    pub(super) fn evict(&mut self, now: u64, cap: usize) {
        self.purge_expired(now);
        if self.len() < cap {
            return;
        }
        let mut ranks = Vec::with_capacity(self.len());
        self.retain(now, |at, held| {
            ranks.push((held, at));
            true
        });
        let drop_n = (ranks.len() / 8).max(1);
        let (_, cutoff, _) = ranks.select_nth_unstable(drop_n - 1);
        let cutoff = *cutoff;
        let mut left = drop_n;
        self.retain(now, |at, held| {
            if left > 0 && (held, at) <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
    }
}
