//! How a policy group keeps its keys' states: in the typed table of the form its policy
//! makes (one word, a sliding-window log with its ends, or a list of quotas), and a
//! one-word state that outgrew its word in the wide table (the lists). One implementation
//! for every form, generic over the small [`Form`] trait.

use std::marker::PhantomData;

use hashbrown::HashTable;

use crate::algorithm::{self, LogEnds, Machine, OneWord, Op, QuotaState, SlidingLog, WordLayout};
use crate::key::{KeyBuf, StoredKey};
use crate::quota::{Params, Policy};

/// The one quota of a single-quota group's policy.
#[inline]
fn only(policy: &Policy) -> &Params {
    match policy.params() {
        [q] => q,
        // A group is found only by policies of its own number of quotas.
        _ => unreachable!("a single-quota group serves single-quota policies"),
    }
}

/// How a group keeps one key's states: what an entry holds ([`State`](Self::State)) and
/// which of the group's tables holds it.
pub(super) trait Form {
    type State;
    /// How a group of `policy` lays out this form's words.
    fn layout(_: &Policy) -> WordLayout {
        WordLayout::default()
    }
    fn table<K>(tables: &mut Tables<K>) -> &mut Table<K, Self::State>;
    /// The fresh states of `policy`, or, when this form cannot hold them, the wide form.
    fn fresh(layout: &WordLayout, policy: &Policy, now: u64) -> Result<Self::State, List>;
    /// Runs `op`; when this form cannot hold the result, `Err` with the states, unchanged,
    /// in the wide form.
    fn run<O: Op>(s: &mut Self::State, l: &WordLayout, p: &Policy, op: O) -> Result<O::Out, List>;
    /// Runs `op` on states of this form kept in the wide table.
    #[inline]
    fn run_wide<O: Op>(list: &mut List, policy: &Policy, op: O) -> O::Out {
        op.list(&mut list.0, policy)
    }
}

/// A single quota's state in one word, laid out by its machine's codec.
pub(super) struct Word<M>(PhantomData<M>);

impl<M: OneWord + 'static> Form for Word<M> {
    type State = u64;
    fn layout(policy: &Policy) -> WordLayout {
        M::layout(only(policy))
    }
    #[inline(always)]
    fn table<K>(tables: &mut Tables<K>) -> &mut Table<K, u64> {
        &mut tables.words
    }
    fn fresh(layout: &WordLayout, policy: &Policy, now: u64) -> Result<u64, List> {
        let wide = || List(algorithm::fresh_states(policy, now).into());
        M::fresh(only(policy), now).pack(layout).ok_or_else(wide)
    }
    #[inline(always)]
    fn run<O: Op>(w: &mut u64, l: &WordLayout, p: &Policy, op: O) -> Result<O::Out, List> {
        let mut m = M::unpack(*w, l);
        let out = op.one(&mut m, only(p));
        match m.pack(l) {
            Some(packed) => *w = packed,
            None => return Err(List::of_word(M::ALGORITHM, *w, l)),
        }
        Ok(out)
    }
    /// The machine's own transition (as in its word), not the list walk: a busy bucket
    /// with a large burst lives here.
    #[inline]
    fn run_wide<O: Op>(list: &mut List, policy: &Policy, op: O) -> O::Out {
        match list.0.first_mut().and_then(QuotaState::machine_mut::<M>) {
            Some(m) => op.one(m, only(policy)),
            None => unreachable!("a one-word group's wide states are its machine's"),
        }
    }
}

/// A single sliding-window log, held in the entry with the times of its ends, so that an
/// admission that drops nothing from the window reads only the entry.
#[derive(Debug)]
pub(super) struct Log {
    log: SlidingLog,
    ends: LogEnds,
}

impl Form for Log {
    type State = Self;
    #[inline(always)]
    fn table<K>(tables: &mut Tables<K>) -> &mut Table<K, Self> {
        &mut tables.logs
    }
    fn fresh(_: &WordLayout, policy: &Policy, now: u64) -> Result<Self, List> {
        let log = SlidingLog::fresh(only(policy), now);
        let ends = LogEnds::of(&log);
        Ok(Self { log, ends })
    }
    #[inline]
    fn run<O: Op>(s: &mut Self, _: &WordLayout, p: &Policy, op: O) -> Result<O::Out, List> {
        Ok(op.log(&mut s.log, &mut s.ends, only(p)))
    }
}

/// States behind one pointer: those of a policy of several quotas, and the wide form of a
/// one-word state that outgrew its word.
#[derive(Debug)]
pub(super) struct List(Box<[QuotaState]>);

impl List {
    #[cold]
    fn of_word(algorithm: crate::quota::Algorithm, word: u64, layout: &WordLayout) -> Self {
        Self(Box::new([QuotaState::from_word(algorithm, word, layout)]))
    }
}

impl Form for List {
    type State = Self;
    #[inline(always)]
    fn table<K>(tables: &mut Tables<K>) -> &mut Table<K, Self> {
        &mut tables.lists
    }
    fn fresh(_: &WordLayout, policy: &Policy, now: u64) -> Result<Self, List> {
        Ok(Self(algorithm::fresh_states(policy, now).into()))
    }
    fn run<O: Op>(s: &mut Self, _: &WordLayout, p: &Policy, op: O) -> Result<O::Out, List> {
        Ok(op.list(&mut s.0, p))
    }
}

/// One key of one policy group: the key and its states, nothing else (the policy is the
/// group's).
#[derive(Debug)]
pub(super) struct Entry<K, S> {
    key: K,
    state: S,
}

pub(super) type Table<K, S> = HashTable<Entry<K, S>>;

// The measured entry sizes (docs/ratelimit.md): 16 bytes is governor's `usize`-keyed entry.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<Entry<KeyBuf, u64>>() == 24);
    assert!(size_of::<Entry<u64, u64>>() == 16);
    assert!(size_of::<Entry<KeyBuf, Log>>() == 72);
    assert!(size_of::<Entry<u64, Log>>() == 64);
    assert!(size_of::<Entry<KeyBuf, List>>() == 32);
};

/// What every step of one store call on one key needs: the store's hash of (policy name,
/// key), the policy, and the same hash of a stored key (for a table that grows). Passed by
/// value: inlined steps keep it in registers, and only the rare out-of-line ones (a new key,
/// a state that outgrows its form) copy it.
#[derive(Clone, Copy)]
pub(super) struct Call<'p, R> {
    pub(super) h: u64,
    pub(super) policy: &'p Policy,
    pub(super) rehash: R,
}

/// A group's keys of one kind (text or id). Only the table of the group's form and, for a
/// one-word form, the wide table (`lists`) ever hold entries; a key is in one table only.
#[derive(Debug)]
pub(super) struct Tables<K> {
    words: Table<K, u64>,
    logs: Table<K, Log>,
    pub(super) lists: Table<K, List>,
}

impl<K> Default for Tables<K> {
    fn default() -> Self {
        Self {
            words: HashTable::new(),
            logs: HashTable::new(),
            lists: HashTable::new(),
        }
    }
}

/// Which of a group's tables keeps keys of a kind: text keys in `text`, ids in `ids`.
pub(super) trait KeyKind: StoredKey {
    fn tables(group: &mut Group) -> &mut Tables<Self>;
}

impl KeyKind for KeyBuf {
    #[inline(always)]
    fn tables(group: &mut Group) -> &mut Tables<Self> {
        &mut group.text
    }
}

impl KeyKind for u64 {
    #[inline(always)]
    fn tables(group: &mut Group) -> &mut Tables<Self> {
        &mut group.ids
    }
}

/// Whether `key` was in `table` (and is no more).
fn forget<K: StoredKey, S>(table: &mut Table<K, S>, h: u64, key: K::Probe<'_>) -> bool {
    let found = table.find_entry(h, |e| e.key.matches(key));
    found.map(|e| e.remove()).is_ok()
}

fn put<K, S>(table: &mut Table<K, S>, c: Call<'_, impl Copy + Fn(&K) -> u64>, key: K, state: S) {
    table.insert_unique(c.h, Entry { key, state }, |e| (c.rehash)(&e.key));
}

impl<K: StoredKey> Tables<K> {
    fn len(&self) -> usize {
        self.words.len() + self.logs.len() + self.lists.len()
    }

    fn remove(&mut self, h: u64, key: K::Probe<'_>) {
        let _ = forget(&mut self.words, h, key)
            || forget(&mut self.logs, h, key)
            || forget(&mut self.lists, h, key);
    }

    /// Keeps the entries for which `keep(expires_at, holds)` at `now` says so (the states
    /// read as `policy`'s, words laid out by `layout`).
    fn retain(
        &mut self,
        p: &Policy,
        l: &WordLayout,
        now: u64,
        keep: &mut impl FnMut(u64, u64) -> bool,
    ) {
        let mut keep = |(at, held)| keep(at, held);
        let word = |w| QuotaState::from_word(p.algorithm(), w, l).expiry(only(p), now);
        self.words.retain(|e| keep(word(e.state)));
        self.logs.retain(|e| keep(e.state.log.expiry(only(p), now)));
        self.lists
            .retain(|e| keep(algorithm::expiry(&e.state.0, p.params(), now)));
    }

    /// Runs `op` on the states of `key` in form `F`, or in the wide table when they moved
    /// there; `None` when the key is not held. States that outgrow form `F` move. Always
    /// inlined: the shard calls it twice (the second time after making a key fresh), and
    /// out of line it cost every call of a known key some twenty instructions.
    #[inline(always)]
    fn run<F: Form, O: Op>(
        &mut self,
        c: Call<'_, impl Copy + Fn(&K) -> u64>,
        key: K::Probe<'_>,
        layout: &WordLayout,
        op: O,
    ) -> Option<O::Out> {
        if let Ok(mut found) = F::table(self).find_entry(c.h, |e| e.key.matches(key)) {
            let wide = match F::run(&mut found.get_mut().state, layout, c.policy, op) {
                Ok(out) => return Some(out),
                Err(wide) => wide,
            };
            let (Entry { key, .. }, _) = found.remove();
            return Some(self.insert_wide::<F, O>(c, key, wide, op));
        }
        if self.lists.is_empty() {
            return None;
        }
        let e = self.lists.find_mut(c.h, |e| e.key.matches(key))?;
        Some(F::run_wide(&mut e.state, c.policy, op))
    }

    /// Runs `op` on `wide`, then keeps it for `key` in the wide table.
    #[cold]
    fn insert_wide<F: Form, O: Op>(
        &mut self,
        c: Call<'_, impl Copy + Fn(&K) -> u64>,
        key: K,
        mut wide: List,
        op: O,
    ) -> O::Out {
        let out = F::run_wide(&mut wide, c.policy, op);
        put(&mut self.lists, c, key, wide);
        out
    }
}

/// The keys of one policy in one shard, found by the policy's name and what its states mean
/// ([`Policy::reads_states_of`]): a policy replaced by a matching one keeps the states (the
/// group follows the new object), any other gets a group of its own, so its keys start
/// fresh while the old group's expire or are evicted like any other.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) policy: Policy,
    /// How the group's one-word states are laid out, fixed when it is made (a policy
    /// replaced later by one with other figures is still read with it: a state its fields
    /// cannot hold moves to the wide table instead).
    layout: WordLayout,
    pub(super) text: Tables<KeyBuf>,
    pub(super) ids: Tables<u64>,
}

impl Group {
    /// Whether `policy` reads this group's states as they are.
    #[inline(always)]
    fn fits(&self, policy: &Policy) -> bool {
        self.policy.same(policy) || self.matches(policy)
    }

    /// [`fits`](Self::fits) for another policy object (out of line: rare).
    #[cold]
    #[inline(never)]
    fn matches(&self, policy: &Policy) -> bool {
        self.policy.name() == policy.name() && self.policy.reads_states_of(policy)
    }

    pub(super) fn len(&self) -> usize {
        self.text.len() + self.ids.len()
    }

    /// Keeps the entries for which `keep(expires_at, holds)` at `now` says so.
    pub(super) fn retain(&mut self, now: u64, keep: &mut impl FnMut(u64, u64) -> bool) {
        self.text.retain(&self.policy, &self.layout, now, keep);
        self.ids.retain(&self.policy, &self.layout, now, keep);
    }
}

/// A group found under another object of a matching policy follows that one.
#[cold]
#[inline(never)]
fn follow(g: &mut Group, policy: &Policy) {
    g.policy = policy.clone();
}

/// The group of a policy first seen in this shard.
#[cold]
#[inline(never)]
fn new_group<'t, F: Form>(groups: &'t mut HashTable<Group>, policy: &Policy) -> &'t mut Group {
    let group = Group {
        policy: policy.clone(),
        layout: F::layout(policy),
        text: Tables::default(),
        ids: Tables::default(),
    };
    groups
        .insert_unique(policy.name_hash(), group, |g| g.policy.name_hash())
        .into_mut()
}

/// One shard's keys, grouped by policy ([`Group`]); each group's tables find a key by the
/// store's hash of (policy name, key) and tell keys apart by comparing them, so two keys
/// whose hashes collide still never share state.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) groups: HashTable<Group>,
}

impl Shard {
    pub(super) fn len(&self) -> usize {
        self.groups.iter().map(Group::len).sum()
    }

    /// The group of `policy`, made when missing, following `policy` from now on. Inlined
    /// into every call: the usual case is one probe and a pointer comparison (the same
    /// policy object as last time); the rest is out of line.
    #[inline(always)]
    fn group_mut<F: Form>(&mut self, policy: &Policy) -> &mut Group {
        match self
            .groups
            .find_entry(policy.name_hash(), |g| g.fits(policy))
        {
            Ok(found) => {
                let g = found.into_mut();
                if !g.policy.same(policy) {
                    follow(g, policy);
                }
                g
            }
            Err(absent) => new_group::<F>(absent.into_table(), policy),
        }
    }

    /// Runs `op` on the states of (policy, key) in form `F`. A key not held is made fresh
    /// when `fresh` gives the time and the shard's bound `(now, cap)` (evicting first when
    /// the shard is full), else left alone (`None`).
    #[inline]
    pub(super) fn run<K: KeyKind, F: Form, O: Op>(
        &mut self,
        c: Call<'_, impl Copy + Fn(&K) -> u64>,
        key: K::Probe<'_>,
        fresh: Option<(u64, usize)>,
        op: O,
    ) -> Option<O::Out> {
        let g = match fresh {
            Some(_) => self.group_mut::<F>(c.policy),
            None => self
                .groups
                .find_mut(c.policy.name_hash(), |g| g.fits(c.policy))?,
        };
        let layout = g.layout;
        if let Some(out) = K::tables(g).run::<F, O>(c, key, &layout, op) {
            return Some(out);
        }
        let (now, cap) = fresh?;
        let g = self.insert_fresh::<K, F>(c, key, now, cap);
        let layout = g.layout;
        K::tables(g).run::<F, O>(c, key, &layout, op)
    }

    /// Keeps fresh states for a key not held (evicting first when the shard is full), in
    /// the wide table when form `F` cannot hold them; the key's group.
    #[cold]
    fn insert_fresh<K: KeyKind, F: Form>(
        &mut self,
        c: Call<'_, impl Copy + Fn(&K) -> u64>,
        key: K::Probe<'_>,
        now: u64,
        cap: usize,
    ) -> &mut Group {
        if self.len() >= cap {
            self.evict(now, cap);
        }
        // Eviction may have dropped the group; a new one has its own layout.
        let g = self.group_mut::<F>(c.policy);
        let (key, layout) = (K::stored(key), g.layout);
        let tables = K::tables(g);
        match F::fresh(&layout, c.policy, now) {
            Ok(state) => put(F::table(tables), c, key, state),
            Err(wide) => put(&mut tables.lists, c, key, wide),
        }
        g
    }

    /// Forget `key` in the group that reads `policy`'s states; the groups of other forms
    /// of its name keep theirs (as the Redis store's keys of another form do).
    pub(super) fn remove<K: KeyKind>(&mut self, h: u64, policy: &Policy, key: K::Probe<'_>) {
        if let Some(g) = self.groups.find_mut(policy.name_hash(), |g| g.fits(policy)) {
            K::tables(g).remove(h, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Admit, FixedWindow, Peek};
    use crate::key::Probe;
    use crate::quota::{Algorithm, Quota};

    /// Forced hash collisions: entries stay apart, and removal and expiry keep the others
    /// reachable.
    #[test]
    fn colliding_hashes_stay_apart() {
        let fixed = |name| Policy::single(name, Algorithm::FixedWindow, Quota::per_minute(2));
        let (policy, other) = (fixed("p").unwrap(), fixed("q").unwrap());
        let now = 1_700_006_400_000_000;
        let mut shard = Shard::default();
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        // Runs `op` on `key` in a call where every key hashes to 7, also when a table grows.
        fn run<O: Op>(
            shard: &mut Shard,
            p: &Policy,
            k: &str,
            fresh: bool,
            op: O,
        ) -> Option<O::Out> {
            let c = Call {
                h: 7,
                policy: p,
                rehash: |_: &KeyBuf| 7,
            };
            let fresh = fresh.then_some((1_700_006_400_000_000, 1_000));
            shard.run::<KeyBuf, Word<FixedWindow>, O>(c, Probe::new(k.as_bytes()), fresh, op)
        }
        for (cost, admitted) in [(2, true), (1, false)] {
            for p in [&policy, &other] {
                for key in &keys {
                    let got = run(&mut shard, p, key, true, Admit { now, cost });
                    assert_eq!(got, Some(admitted), "{key} cost {cost}");
                }
            }
            assert_eq!(shard.len(), 80);
        }
        shard.remove::<KeyBuf>(7, &policy, Probe::new(b"k0"));
        assert_eq!(shard.len(), 79);
        let mut held = |p, k| run(&mut shard, p, k, false, Peek { now }).is_some();
        assert!(!held(&policy, "k0"));
        assert!(held(&other, "k0") && held(&policy, "k1"));
        // Everything expires when its window ends.
        shard.purge_expired(now + 60_000_000);
        assert_eq!(shard.len(), 0);
    }
}
