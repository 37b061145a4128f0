//! Exact nearest-neighbour search over unit vectors: a flat, contiguous scan that the
//! compiler vectorises. Pure logic, no I/O.

use std::collections::HashMap;

use crate::embed::check_vector;
use crate::error::Result;
pub use crate::hnsw::HnswIndex;
use crate::key::EntryId;

const LANES: usize = 8;

/// Dot product of two equally long slices (the cosine similarity of unit vectors).
///
/// Written as eight independent accumulators over `chunks_exact(8)`, a shape LLVM turns
/// into SIMD multiply-adds without `unsafe` or target-specific code. Extra elements of the
/// longer slice are ignored.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    let mut sum = tail;
    for value in acc {
        sum += value;
    }
    sum
}

/// One search result: an entry id and its cosine similarity to the query.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Neighbor {
    /// The entry.
    pub id: EntryId,
    /// Cosine similarity in `[-1, 1]`.
    pub similarity: f32,
}

/// A flat index of unit vectors of one dimension, stored row after row in one `Vec<f32>`.
///
/// Insert and remove are O(1) (remove swaps the last row in); search scans every row,
/// about 1.3 ms for 10k and 15 ms for 100k 384-dimensional rows on one core of a shared
/// 2-core VM (see `docs/benchmarks.md`). Memory: `dimension * 4 + 16` bytes per row plus a hash
/// map slot.
#[derive(Clone, Debug)]
pub struct FlatIndex {
    dimension: usize,
    ids: Vec<EntryId>,
    rows: Vec<f32>,
    positions: HashMap<EntryId, usize>,
}

impl FlatIndex {
    /// An empty index for vectors of `dimension` components.
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            ids: Vec::new(),
            rows: Vec::new(),
            positions: HashMap::new(),
        }
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is in the index.
    pub fn contains(&self, id: &EntryId) -> bool {
        self.positions.contains_key(id)
    }

    /// Add or replace the vector of `id`.
    ///
    /// # Errors
    /// [`crate::Error::DimensionMismatch`], [`crate::Error::NonFiniteVector`] or
    /// [`crate::Error::ZeroVector`]; the index is unchanged then.
    pub fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<()> {
        check_vector(vector, self.dimension)?;
        if let Some(&row) = self.positions.get(&id) {
            self.rows[row * self.dimension..(row + 1) * self.dimension].copy_from_slice(vector);
        } else {
            self.positions.insert(id, self.ids.len());
            self.ids.push(id);
            self.rows.extend_from_slice(vector);
        }
        Ok(())
    }

    /// Remove `id`; returns whether it was there.
    pub fn remove(&mut self, id: &EntryId) -> bool {
        let Some(row) = self.positions.remove(id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            self.ids[row] = moved;
            self.positions.insert(moved, row);
            let (head, tail) = self.rows.split_at_mut(last * self.dimension);
            head[row * self.dimension..(row + 1) * self.dimension].copy_from_slice(tail);
        }
        self.ids.pop();
        self.rows.truncate(last * self.dimension);
        true
    }

    /// The ids in the index.
    pub fn ids(&self) -> &[EntryId] {
        &self.ids
    }

    /// The vector of `id`, if present.
    pub fn row(&self, id: &EntryId) -> Option<&[f32]> {
        let row = *self.positions.get(id)?;
        Some(&self.rows[row * self.dimension..(row + 1) * self.dimension])
    }

    /// The `limit` rows most similar to `query` with similarity at least `min_similarity`,
    /// best first.
    ///
    /// # Errors
    /// [`crate::Error::DimensionMismatch`], [`crate::Error::NonFiniteVector`] or
    /// [`crate::Error::ZeroVector`] for a bad query.
    pub fn search(
        &self,
        query: &[f32],
        limit: usize,
        min_similarity: f32,
    ) -> Result<Vec<Neighbor>> {
        check_vector(query, self.dimension)?;
        let mut best: Vec<Neighbor> = Vec::with_capacity(limit + 1);
        if limit == 0 {
            return Ok(best);
        }
        let mut floor = min_similarity;
        for (row, id) in self.rows.chunks_exact(self.dimension).zip(&self.ids) {
            let similarity = dot(row, query);
            if similarity < floor {
                continue;
            }
            let at = best.partition_point(|n| n.similarity >= similarity);
            best.insert(
                at,
                Neighbor {
                    id: *id,
                    similarity,
                },
            );
            if best.len() > limit {
                best.pop();
            }
            if best.len() == limit {
                floor = floor.max(best[limit - 1].similarity);
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::normalize;
    use proptest::prelude::*;

    fn id(n: u8) -> EntryId {
        EntryId::from_bytes([n; 16])
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn search_finds_the_nearest_and_respects_the_floor() {
        let mut index = FlatIndex::new(2);
        index.insert(id(1), &[1.0, 0.0]).unwrap();
        index.insert(id(2), &[0.0, 1.0]).unwrap();
        let mut q = vec![0.9, 0.1];
        normalize(&mut q);
        let found = index.search(&q, 1, 0.5).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, id(1));
        assert!(
            index
                .search(&[0.0, -1.0], 5, 0.0)
                .unwrap()
                .iter()
                .all(|n| n.id != id(2))
        );
        assert!(index.search(&[1.0], 1, 0.0).is_err());
        assert!(index.insert(id(3), &[f32::NAN, 1.0]).is_err());
        assert_eq!(index.len(), 2);
    }

    proptest! {
        #[test]
        fn flat_search_agrees_with_brute_force(
            rows in proptest::collection::vec(proptest::collection::vec(-1.0f32..1.0, 5), 1..40),
            removals in proptest::collection::vec(0usize..40, 0..10),
            query in proptest::collection::vec(-1.0f32..1.0, 5),
        ) {
            prop_assume!(query.iter().any(|x| *x != 0.0));
            let mut index = FlatIndex::new(5);
            let mut model = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                if row.iter().all(|x| *x == 0.0) { continue; }
                let mut v = row.clone();
                normalize(&mut v);
                index.insert(id(i as u8), &v).unwrap();
                model.push((id(i as u8), v));
            }
            for r in removals {
                let removed = index.remove(&id(r as u8));
                let before = model.len();
                model.retain(|(i, _)| *i != id(r as u8));
                prop_assert_eq!(removed, model.len() != before);
            }
            prop_assert_eq!(index.len(), model.len());
            let found = index.search(&query, 3, -2.0).unwrap();
            let mut expected: Vec<f32> = model.iter().map(|(_, v)| dot(v, &query)).collect();
            expected.sort_by(|a, b| b.total_cmp(a));
            expected.truncate(3);
            let got: Vec<f32> = found.iter().map(|n| n.similarity).collect();
            prop_assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                prop_assert!((g - e).abs() < 1e-5);
            }
        }
    }
}

/// Partitions with at least this many vectors move from the flat scan to the approximate
/// [`HnswIndex`]; below a quarter of it they move back. Chosen from the crossover measured
/// in `benches/semantic_cache.rs` (see the crate guide).
pub const ANN_MIN_ROWS: usize = 4_096;

/// How far below the asked similarity an approximate search reaches, so that callers who
/// re-score candidates exactly (both stores do) miss nothing int8 rounding pushed under.
pub const APPROX_MARGIN: f32 = 0.02;

/// Graph inserts done per insert or remove while a partition moves to the graph.
const CATCH_UP_PER_OP: usize = 8;

#[derive(Clone, Debug)]
enum Kind {
    Flat(FlatIndex),
    /// Moving to the graph: the flat index answers (exactly) while the graph is built a
    /// few rows per operation, so crossing [`ANN_MIN_ROWS`] costs no pause.
    Building {
        flat: FlatIndex,
        graph: HnswIndex,
        pending: std::collections::VecDeque<EntryId>,
    },
    Hnsw(HnswIndex),
}

/// The index of one partition: exact [`FlatIndex`] while small, approximate [`HnswIndex`]
/// (int8 codes, about 950 bytes per 384-d row instead of 1,600) from [`ANN_MIN_ROWS`]
/// vectors on.
///
/// Crossing the threshold costs no pause: the graph is built
/// eight rows per later insert or remove while the flat index keeps answering, and takes
/// over once it holds every row.
#[derive(Clone, Debug)]
pub struct VectorIndex {
    kind: Kind,
    ann_min_rows: usize,
}

impl VectorIndex {
    /// An empty index for vectors of `dimension` components.
    pub fn new(dimension: usize) -> Self {
        Self::with_ann_min_rows(dimension, ANN_MIN_ROWS)
    }

    /// An empty index that moves to the graph at `rows` vectors instead of
    /// [`ANN_MIN_ROWS`] (tests exercise the graph at small sizes with it).
    #[doc(hidden)]
    pub fn with_ann_min_rows(dimension: usize, rows: usize) -> Self {
        Self {
            kind: Kind::Flat(FlatIndex::new(dimension)),
            ann_min_rows: rows.max(4),
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Flat(f) | Kind::Building { flat: f, .. } => f.len(),
            Kind::Hnsw(h) => h.len(),
        }
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether searches are approximate (the partition is large and its graph is built).
    pub fn is_approximate(&self) -> bool {
        matches!(self.kind, Kind::Hnsw(_))
    }

    /// Add or replace the vector of `id`.
    ///
    /// # Errors
    /// A vector error (dimension, `NaN`, zero); the index is unchanged then.
    pub fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<()> {
        match &mut self.kind {
            Kind::Flat(flat) => {
                flat.insert(id, vector)?;
                if flat.len() >= self.ann_min_rows {
                    let flat = std::mem::replace(flat, FlatIndex::new(0));
                    let pending = flat.ids().iter().copied().collect();
                    self.kind = Kind::Building {
                        graph: HnswIndex::new(flat.dimension()),
                        flat,
                        pending,
                    };
                }
            }
            Kind::Building {
                flat,
                graph,
                pending,
            } => {
                flat.insert(id, vector)?;
                graph.remove(&id);
                pending.push_back(id);
            }
            Kind::Hnsw(graph) => graph.insert(id, vector)?,
        }
        self.catch_up();
        Ok(())
    }

    /// Build a little more of the graph; hand over once it is complete.
    fn catch_up(&mut self) {
        let Kind::Building {
            flat,
            graph,
            pending,
        } = &mut self.kind
        else {
            return;
        };
        for _ in 0..CATCH_UP_PER_OP {
            let Some(id) = pending.pop_front() else { break };
            if let Some(row) = flat.row(&id) {
                // Rows of the flat index were checked on the way in.
                let _ = graph.insert(id, row);
            }
        }
        if pending.is_empty() {
            let graph = std::mem::replace(graph, HnswIndex::new(0));
            self.kind = Kind::Hnsw(graph);
        }
    }

    /// Remove `id`; returns whether it was there. Falling under a quarter of
    /// [`ANN_MIN_ROWS`] moves the rows back to a flat index (decoded from the codes).
    pub fn remove(&mut self, id: &EntryId) -> bool {
        let removed = match &mut self.kind {
            Kind::Flat(flat) => return flat.remove(id),
            Kind::Building { flat, graph, .. } => {
                graph.remove(id);
                flat.remove(id)
            }
            Kind::Hnsw(graph) => graph.remove(id),
        };
        match &mut self.kind {
            Kind::Hnsw(graph) if graph.len() < self.ann_min_rows / 4 => {
                let mut flat = FlatIndex::new(graph.dimension());
                for (id, v) in graph.decoded() {
                    // Decoded codes of checked vectors are finite and non-zero.
                    let _ = flat.insert(id, &v);
                }
                self.kind = Kind::Flat(flat);
            }
            Kind::Building { flat, .. } if flat.len() < self.ann_min_rows / 4 => {
                let flat = std::mem::replace(flat, FlatIndex::new(0));
                self.kind = Kind::Flat(flat);
            }
            _ => self.catch_up(),
        }
        removed
    }

    /// Up to `limit` nearest rows, best first. Flat: exact, similarity at least
    /// `min_similarity`. Approximate: up to `2 * limit` candidates with similarity (from
    /// int8 codes) at least `min_similarity - APPROX_MARGIN`; re-score them exactly.
    ///
    /// # Errors
    /// A vector error for a bad query.
    pub fn search(
        &self,
        query: &[f32],
        limit: usize,
        min_similarity: f32,
    ) -> Result<Vec<Neighbor>> {
        match &self.kind {
            Kind::Flat(flat) | Kind::Building { flat, .. } => {
                flat.search(query, limit, min_similarity)
            }
            Kind::Hnsw(graph) => graph.search(
                query,
                limit.saturating_mul(2),
                min_similarity - APPROX_MARGIN,
            ),
        }
    }

    /// Approximate heap bytes of the vectors and links.
    pub fn approx_bytes(&self) -> usize {
        let flat_bytes = |f: &FlatIndex| {
            f.rows.capacity() * 4 + f.ids.capacity() * 16 + f.positions.capacity() * 32
        };
        match &self.kind {
            Kind::Flat(f) => flat_bytes(f),
            Kind::Building { flat, graph, .. } => flat_bytes(flat) + graph.approx_bytes(),
            Kind::Hnsw(h) => h.approx_bytes(),
        }
    }
}

/// Deterministic random unit vectors for tests and benches.
#[doc(hidden)]
pub mod tests_support {
    /// xorshift64*.
    #[derive(Debug)]
    #[allow(
        clippy::exhaustive_structs,
        reason = "a newtype around the generator's state, complete by nature (hidden test support)"
    )]
    pub struct Rng(pub u64);

    impl Rng {
        /// Uniform in `[-1, 1)`.
        pub fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }

        /// A random unit vector.
        pub fn unit_vector(&mut self, dimension: usize) -> Vec<f32> {
            let mut v: Vec<f32> = (0..dimension).map(|_| self.next_f32()).collect();
            crate::embed::normalize(&mut v);
            v
        }
    }
}
