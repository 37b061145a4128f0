//! An approximate nearest-neighbour index for large partitions: a hierarchical navigable
//! small-world graph (HNSW, Malkov & Yashunin 2016) over int8-quantised unit vectors.
//! Pure logic, no I/O.
//!
//! - **Vectors** are stored as int8 codes with one f32 scale each (`x ≈ code * scale`,
//!   `scale = max|x| / 127`): 384 bytes for a 384-d vector instead of 1,536. Similarities
//!   from codes are off by about 1e-3; callers re-score their final candidates with the
//!   exact vectors they keep (the cache re-reads every candidate entry anyway).
//! - **Deletes** are tombstones (O(1)): a deleted node keeps routing searches but is never
//!   returned. Each later insert or delete consolidates up to two tombstones — the node's
//!   neighbours are re-linked among themselves and the slot is freed for the next insert —
//!   so tombstones never pile up and no full rebuild (a long pause) is ever needed.
//! - **Expiry** is the owner's business: it deletes expired ids (see the local index).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::error::{Error, Result};
use crate::index::Neighbor;
use crate::key::EntryId;

/// Links per node on the upper layers.
const M: usize = 16;
/// Links per node on layer 0.
const M0: usize = 2 * M;
/// Candidates kept while linking a new node (100: the 50k recall test after churn needs more
/// than 64).
const EF_CONSTRUCTION: usize = 100;
/// Candidates kept while searching (at least; more when more results are asked for).
pub(crate) const EF_SEARCH: usize = 64;
/// Tombstones consolidated per insert or delete.
const CONSOLIDATE_PER_OP: usize = 2;
const EMPTY: u32 = u32::MAX;

/// Dot product of two int8 codes (exact, in i32): the graph's hot loop (three quarters of
/// a 100k-row search). On x86-64 CPUs with AVX2 (checked once, at run time) the plain
/// reduction runs compiled for AVX2, where LLVM turns it into `vpmaddwd` over 16 lanes;
/// elsewhere [`dot_i8_pairs`] runs. 384 components: about 20 ns with AVX2, 40 ns for the
/// pairs, against 55 ns for the 32-lane i32 loop this replaced (in cache, development box).
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = pulp::x86::V3::try_new() {
        return avx2.vectorize(
            #[inline(always)]
            || dot_i8_reduce(a, b),
        );
    }
    dot_i8_pairs(a, b)
}

/// The plain reduction: what LLVM vectorises best when AVX2 is on.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot_i8_reduce(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

/// Blocks of 16 widened to i16, then adjacent products summed in pairs: the shape of SSE2's
/// `pmaddwd` (multiply i16, add neighbours into i32), which LLVM emits for it on the
/// baseline x86-64 target.
#[inline]
fn dot_i8_pairs(a: &[i8], b: &[i8]) -> i32 {
    const BLOCK: usize = 16;
    let mut sum = 0i32;
    let mut ca = a.chunks_exact(BLOCK);
    let mut cb = b.chunks_exact(BLOCK);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let mut wx = [0i16; BLOCK];
        let mut wy = [0i16; BLOCK];
        for i in 0..BLOCK {
            wx[i] = i16::from(x[i]);
            wy[i] = i16::from(y[i]);
        }
        let mut pairs = [0i32; BLOCK / 2];
        for i in 0..BLOCK / 2 {
            pairs[i] = i32::from(wx[2 * i]) * i32::from(wy[2 * i])
                + i32::from(wx[2 * i + 1]) * i32::from(wy[2 * i + 1]);
        }
        sum += pairs.iter().sum::<i32>();
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += i32::from(*x) * i32::from(*y);
    }
    sum
}

/// Quantise a vector to int8 codes and their scale.
fn quantize(vector: &[f32], out: &mut [i8]) -> f32 {
    let max = vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (o, x) in out.iter_mut().zip(vector) {
        *o = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// A candidate during search, ordered by similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scored {
    similarity: f32,
    node: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity
            .total_cmp(&other.similarity)
            .then(self.node.cmp(&other.node))
    }
}

/// The lowest-similarity-first view of a [`Scored`], for the result heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Worst(std::cmp::Reverse<Scored>);

/// Visited nodes of one search: one bit per node.
struct Visited(Vec<u64>);

impl Visited {
    fn new(nodes: usize) -> Self {
        Self(vec![0; nodes.div_ceil(64)])
    }

    /// Mark `node`; whether it was new.
    fn insert(&mut self, node: u32) -> bool {
        let (word, bit) = (node as usize / 64, node % 64);
        let Some(w) = self.0.get_mut(word) else {
            return false;
        };
        let new = *w & (1 << bit) == 0;
        *w |= 1 << bit;
        new
    }
}

/// An HNSW graph (Malkov & Yashunin) over int8-quantised unit vectors.
///
/// Vectors are stored as int8 codes with one f32 scale each (384 + 4 bytes for 384-d);
/// similarities from codes are off by about 1e-3, so callers re-score their final
/// candidates with exact vectors. Deletes are tombstones (O(1)) that keep routing searches
/// but are never returned; each later insert or delete consolidates up to two of them
/// (their neighbours are re-linked, the slot is reused), so there is no full-rebuild pause.
/// [`VectorIndex`](crate::index::VectorIndex) uses it for partitions of
/// [`ANN_MIN_ROWS`](crate::index::ANN_MIN_ROWS) rows and more.
#[derive(Clone, Debug)]
pub struct HnswIndex {
    dimension: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    ids: Vec<EntryId>,
    levels: Vec<u8>,
    /// Layer-0 links, `M0` per node, `EMPTY` padded.
    links0: Vec<u32>,
    /// Links on layers 1.., per node (empty for layer-0-only nodes).
    upper: Vec<Vec<Vec<u32>>>,
    /// 0 = live, 1 = tombstone, 2 = free slot.
    state: Vec<u8>,
    positions: HashMap<EntryId, u32>,
    tombstones: Vec<u32>,
    free: Vec<u32>,
    entry: Option<u32>,
    max_level: u8,
    rng: u64,
}

const LIVE: u8 = 0;
const TOMBSTONE: u8 = 1;
const FREE: u8 = 2;

impl HnswIndex {
    /// An empty index for vectors of `dimension` components.
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            codes: Vec::new(),
            scales: Vec::new(),
            ids: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            state: Vec::new(),
            positions: HashMap::new(),
            tombstones: Vec::new(),
            free: Vec::new(),
            entry: None,
            max_level: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no live vector is left.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Nodes allocated (live, tombstones and free slots).
    pub fn slots(&self) -> usize {
        self.ids.len()
    }

    /// Tombstones not yet consolidated.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Approximate heap bytes held (codes, links, maps).
    pub fn approx_bytes(&self) -> usize {
        let upper: usize = self
            .upper
            .iter()
            .map(|levels| levels.iter().map(|l| l.capacity() * 4 + 24).sum::<usize>() + 24)
            .sum();
        self.codes.capacity()
            + self.scales.capacity() * 4
            + self.ids.capacity() * 16
            + self.levels.capacity()
            + self.links0.capacity() * 4
            + upper
            + self.state.capacity()
            + self.positions.capacity() * (16 + 4 + 8)
    }

    /// Whether `id` is live in the index.
    pub fn contains(&self, id: &EntryId) -> bool {
        self.positions.contains_key(id)
    }

    /// The live ids and their vectors as decoded from the codes.
    pub fn decoded(&self) -> impl Iterator<Item = (EntryId, Vec<f32>)> + '_ {
        self.positions.iter().map(|(id, &node)| {
            let scale = self.scales[node as usize];
            let v = self
                .code(node)
                .iter()
                .map(|&c| f32::from(c) * scale)
                .collect();
            (*id, v)
        })
    }

    fn code(&self, node: u32) -> &[i8] {
        let start = node as usize * self.dimension;
        &self.codes[start..start + self.dimension]
    }

    fn similarity(&self, query: &[i8], query_scale: f32, node: u32) -> f32 {
        dot_i8(query, self.code(node)) as f32 * query_scale * self.scales[node as usize]
    }

    fn links(&self, node: u32, level: u8) -> &[u32] {
        if level == 0 {
            let start = node as usize * M0;
            let all = &self.links0[start..start + M0];
            let n = all.iter().position(|&l| l == EMPTY).unwrap_or(M0);
            &all[..n]
        } else {
            self.upper[node as usize]
                .get(usize::from(level) - 1)
                .map_or(&[], Vec::as_slice)
        }
    }

    fn set_links(&mut self, node: u32, level: u8, links: &[u32]) {
        if level == 0 {
            let start = node as usize * M0;
            let slot = &mut self.links0[start..start + M0];
            slot.fill(EMPTY);
            slot[..links.len().min(M0)].copy_from_slice(&links[..links.len().min(M0)]);
        } else if let Some(l) = self.upper[node as usize].get_mut(usize::from(level) - 1) {
            l.clear();
            l.extend_from_slice(links);
        }
    }

    fn random_level(&mut self) -> u8 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let uniform = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let level = (-uniform.ln() / (M as f64).ln()).floor();
        level.min(16.0) as u8
    }

    /// Greedy walk to the node most similar to the query on one layer.
    fn greedy(&self, query: &[i8], scale: f32, mut at: u32, level: u8) -> u32 {
        let mut best = self.similarity(query, scale, at);
        loop {
            let mut moved = false;
            for &n in self.links(at, level) {
                if self.state[n as usize] == FREE {
                    continue;
                }
                let s = self.similarity(query, scale, n);
                if s > best {
                    best = s;
                    at = n;
                    moved = true;
                }
            }
            if !moved {
                return at;
            }
        }
    }

    /// The `ef` nodes most similar to the query found on one layer from `start`, best
    /// first (tombstones included: they still route).
    fn search_layer(
        &self,
        query: &[i8],
        scale: f32,
        start: u32,
        ef: usize,
        level: u8,
    ) -> Vec<Scored> {
        let mut visited = Visited::new(self.ids.len());
        visited.insert(start);
        let first = Scored {
            similarity: self.similarity(query, scale, start),
            node: start,
        };
        let mut candidates = BinaryHeap::from([first]);
        let mut results = BinaryHeap::from([Worst(std::cmp::Reverse(first))]);
        while let Some(current) = candidates.pop() {
            let worst = results.peek().map_or(f32::MIN, |w| w.0.0.similarity);
            if current.similarity < worst && results.len() >= ef {
                break;
            }
            for &n in self.links(current.node, level) {
                if !visited.insert(n) || self.state[n as usize] == FREE {
                    continue;
                }
                let s = Scored {
                    similarity: self.similarity(query, scale, n),
                    node: n,
                };
                let worst = results.peek().map_or(f32::MIN, |w| w.0.0.similarity);
                if results.len() < ef || s.similarity > worst {
                    candidates.push(s);
                    results.push(Worst(std::cmp::Reverse(s)));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut out: Vec<Scored> = results.into_iter().map(|w| w.0.0).collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// HNSW's neighbour-selection heuristic: keep a candidate only if it is more similar
    /// to the base than to every neighbour kept so far (spreads links across directions).
    fn select(&self, candidates: &[Scored], max: usize) -> Vec<u32> {
        let mut kept: Vec<Scored> = Vec::with_capacity(max);
        for c in candidates {
            if kept.len() >= max {
                break;
            }
            if self.state[c.node as usize] != LIVE {
                continue;
            }
            let code = self.code(c.node);
            let scale = self.scales[c.node as usize];
            let diverse = kept
                .iter()
                .all(|k| self.similarity(code, scale, k.node) < c.similarity);
            if diverse {
                kept.push(*c);
            }
        }
        // Fill up with the nearest skipped ones: more links, better connectivity.
        if kept.len() < max {
            for c in candidates {
                if kept.len() >= max {
                    break;
                }
                if self.state[c.node as usize] == LIVE && !kept.iter().any(|k| k.node == c.node) {
                    kept.push(*c);
                }
            }
        }
        kept.into_iter().map(|s| s.node).collect()
    }

    /// Scored, sorted candidates for linking `base` among `nodes`.
    fn scored(&self, base: u32, nodes: impl Iterator<Item = u32>) -> Vec<Scored> {
        let code = self.code(base);
        let scale = self.scales[base as usize];
        let mut out: Vec<Scored> = nodes
            .filter(|&n| n != base && self.state[n as usize] == LIVE)
            .map(|n| Scored {
                similarity: self.similarity(code, scale, n),
                node: n,
            })
            .collect();
        out.sort_by(|a, b| b.cmp(a));
        out.dedup_by_key(|s| s.node);
        out
    }

    /// Add `node` to `at`'s links on `level`, shrinking them by the heuristic when full.
    fn link_back(&mut self, at: u32, node: u32, level: u8) {
        let max = if level == 0 { M0 } else { M };
        let links = self.links(at, level);
        if links.contains(&node) {
            return;
        }
        if links.len() < max {
            let mut new = links.to_vec();
            new.push(node);
            self.set_links(at, level, &new);
            return;
        }
        let candidates = self.scored(at, links.iter().copied().chain([node]));
        let kept = self.select(&candidates, max);
        self.set_links(at, level, &kept);
    }

    fn allocate(&mut self, id: EntryId, level: u8) -> u32 {
        if let Some(node) = self.free.pop() {
            let n = node as usize;
            self.ids[n] = id;
            self.levels[n] = level;
            self.state[n] = LIVE;
            self.upper[n] = vec![Vec::new(); usize::from(level)];
            self.links0[n * M0..(n + 1) * M0].fill(EMPTY);
            return node;
        }
        let node = u32::try_from(self.ids.len()).unwrap_or(EMPTY - 1);
        self.ids.push(id);
        self.levels.push(level);
        self.state.push(LIVE);
        self.scales.push(0.0);
        self.codes.resize(self.codes.len() + self.dimension, 0);
        self.links0.resize(self.links0.len() + M0, EMPTY);
        self.upper.push(vec![Vec::new(); usize::from(level)]);
        node
    }

    /// Add or replace the vector of `id` (a unit vector of the index's dimension).
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`], [`Error::NonFiniteVector`] or [`Error::ZeroVector`];
    /// the index is unchanged then.
    pub fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<()> {
        crate::embed::check_vector(vector, self.dimension)?;
        if self.ids.len() >= EMPTY as usize - 1 && self.free.is_empty() {
            return Err(Error::InvalidConfig(
                "the index is full (2^32 nodes)".into(),
            ));
        }
        self.remove(&id);
        self.consolidate(CONSOLIDATE_PER_OP);
        let level = self.random_level();
        let node = self.allocate(id, level);
        let start = node as usize * self.dimension;
        let mut code = vec![0i8; self.dimension];
        let scale = quantize(vector, &mut code);
        self.codes[start..start + self.dimension].copy_from_slice(&code);
        self.scales[node as usize] = scale;
        self.positions.insert(id, node);

        let Some(entry) = self.entry else {
            self.entry = Some(node);
            self.max_level = level;
            return Ok(());
        };
        let mut at = entry;
        let mut l = self.max_level;
        while l > level {
            at = self.greedy(&code, scale, at, l);
            l -= 1;
        }
        let mut level_now = level.min(self.max_level);
        loop {
            let found = self.search_layer(&code, scale, at, EF_CONSTRUCTION, level_now);
            let max = if level_now == 0 { M0 } else { M };
            let candidates: Vec<Scored> =
                found.iter().copied().filter(|s| s.node != node).collect();
            let neighbours = self.select(&candidates, max);
            self.set_links(node, level_now, &neighbours);
            for &n in &neighbours {
                self.link_back(n, node, level_now);
            }
            if let Some(best) = found.first() {
                at = best.node;
            }
            if level_now == 0 {
                break;
            }
            level_now -= 1;
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(node);
        }
        Ok(())
    }

    /// Remove `id`; returns whether it was there. O(1) now (a tombstone); the graph is
    /// repaired a little at a time by later operations.
    pub fn remove(&mut self, id: &EntryId) -> bool {
        let Some(node) = self.positions.remove(id) else {
            return false;
        };
        self.state[node as usize] = TOMBSTONE;
        self.tombstones.push(node);
        self.consolidate(CONSOLIDATE_PER_OP);
        true
    }

    /// Repair the graph around up to `count` tombstones and free their slots.
    fn consolidate(&mut self, count: usize) {
        for _ in 0..count {
            let Some(dead) = self.tombstones.pop() else {
                return;
            };
            // Nodes that link to the dead one are mostly near it: its own links, and what
            // a search for its (still stored) code finds on each of its layers.
            let code = self.code(dead).to_vec();
            let scale = self.scales[dead as usize];
            let top = self.levels[dead as usize];
            let mut at = self.entry.filter(|&e| e != dead);
            if let Some(mut current) = at {
                let mut l = self.max_level;
                while l > top {
                    current = self.greedy(&code, scale, current, l);
                    l -= 1;
                }
                at = Some(current);
            }
            for level in (0..=top).rev() {
                let around: Vec<u32> = self.links(dead, level).to_vec();
                let mut nearby: Vec<u32> = around.clone();
                if let Some(start) = at.filter(|&a| self.state[a as usize] != FREE) {
                    let found = self.search_layer(&code, scale, start, M0, level);
                    if let Some(best) = found.iter().find(|s| s.node != dead) {
                        at = Some(best.node);
                    }
                    nearby.extend(found.iter().map(|s| s.node));
                }
                nearby.sort_unstable();
                nearby.dedup();
                for &n in &nearby {
                    if n == dead {
                        continue;
                    }
                    if self.state[n as usize] != LIVE {
                        continue;
                    }
                    let mine = self.links(n, level);
                    if !mine.contains(&dead) {
                        continue;
                    }
                    let pool = mine
                        .iter()
                        .copied()
                        .chain(around.iter().copied())
                        .filter(|&x| x != dead);
                    let candidates = self.scored(n, pool);
                    let max = if level == 0 { M0 } else { M };
                    let kept = self.select(&candidates, max);
                    self.set_links(n, level, &kept);
                }
            }
            let d = dead as usize;
            self.state[d] = FREE;
            self.links0[d * M0..(d + 1) * M0].fill(EMPTY);
            self.upper[d] = Vec::new();
            self.free.push(dead);
            if self.entry == Some(dead) {
                self.reelect_entry(dead);
            }
        }
    }

    fn reelect_entry(&mut self, dead: u32) {
        // A neighbour on the highest layer, else the highest live node anywhere.
        let best = (0..self.ids.len() as u32)
            .filter(|&n| n != dead && self.state[n as usize] != FREE)
            .max_by_key(|&n| self.levels[n as usize]);
        match best {
            Some(n) => {
                self.entry = Some(n);
                self.max_level = self.levels[n as usize];
            }
            None => {
                self.entry = None;
                self.max_level = 0;
            }
        }
    }

    /// The `limit` live nodes most similar to `query` with similarity at least
    /// `min_similarity` (as computed from the codes), best first.
    ///
    /// # Errors
    /// [`Error::DimensionMismatch`], [`Error::NonFiniteVector`] or [`Error::ZeroVector`]
    /// for a bad query.
    pub fn search(
        &self,
        query: &[f32],
        limit: usize,
        min_similarity: f32,
    ) -> Result<Vec<Neighbor>> {
        crate::embed::check_vector(query, self.dimension)?;
        let Some(entry) = self.entry else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut code = vec![0i8; self.dimension];
        let scale = quantize(query, &mut code);
        let mut at = entry;
        for level in (1..=self.max_level).rev() {
            at = self.greedy(&code, scale, at, level);
        }
        let ef = EF_SEARCH.max(limit.saturating_mul(2));
        let found = self.search_layer(&code, scale, at, ef, 0);
        Ok(found
            .into_iter()
            .filter(|s| self.state[s.node as usize] == LIVE && s.similarity >= min_similarity)
            .take(limit)
            .map(|s| Neighbor {
                id: self.ids[s.node as usize],
                similarity: s.similarity,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::FlatIndex;

    fn id(n: usize) -> EntryId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(n as u64).to_le_bytes());
        EntryId::from_bytes(b)
    }

    #[test]
    fn int8_dot_matches_naive() {
        // Every length around the block sizes, extreme codes included.
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 77, 384, 385] {
            let a: Vec<i8> = (0..len).map(|i| (i * 7 % 255) as i8).collect();
            let b: Vec<i8> = (0..len).map(|i| (i * 13 % 255) as i8).collect();
            let naive: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            assert_eq!(dot_i8(&a, &b), naive, "len {len}");
            assert_eq!(dot_i8_pairs(&a, &b), naive, "len {len}");
            let low = vec![-128i8; len];
            let expected = i32::try_from(len).unwrap() * 128 * 128;
            assert_eq!(dot_i8(&low, &low), expected);
            assert_eq!(dot_i8_pairs(&low, &low), expected);
        }
    }

    #[test]
    fn small_graphs_find_what_the_flat_index_finds() {
        let mut rng = crate::index::tests_support::Rng(7);
        let mut hnsw = HnswIndex::new(32);
        let mut flat = FlatIndex::new(32);
        let rows: Vec<Vec<f32>> = (0..500).map(|_| rng.unit_vector(32)).collect();
        for (i, r) in rows.iter().enumerate() {
            hnsw.insert(id(i), r).unwrap();
            flat.insert(id(i), r).unwrap();
        }
        for (i, r) in rows.iter().enumerate().step_by(7) {
            let found = hnsw.search(r, 1, 0.5).unwrap();
            assert_eq!(found[0].id, id(i));
            assert!((found[0].similarity - 1.0).abs() < 0.01);
        }
        // Removing half: results never name a removed id; the rest stay findable.
        for i in (0..500).step_by(2) {
            assert!(hnsw.remove(&id(i)));
        }
        assert_eq!(hnsw.len(), 250);
        for (i, r) in rows.iter().enumerate() {
            let found = hnsw.search(r, 4, -1.0).unwrap();
            assert!(found.iter().all(|n| hnsw.contains(&n.id)));
            if i % 2 == 1 {
                assert_eq!(found[0].id, id(i));
            }
        }
        assert!(hnsw.search(&[1.0], 1, 0.0).is_err());
        assert!(hnsw.insert(id(9999), &[f32::NAN; 32]).is_err());
        // Slots are reused: the graph does not grow under churn.
        let slots = hnsw.slots();
        for (i, row) in rows.iter().enumerate().take(250) {
            hnsw.insert(id(10_000 + i), row).unwrap();
        }
        assert!(
            hnsw.slots() <= slots + 8,
            "{} slots after churn, {slots} before",
            hnsw.slots()
        );
    }
}
