//! Exact nearest-neighbour search over unit vectors: a flat, contiguous scan that the
//! compiler vectorises. Pure logic, no I/O.

use std::collections::HashMap;

use crate::embed::check_vector;
use crate::error::Result;
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

/// The index of one partition: a [`FlatIndex`] (exact). Small partitions stay flat; see the
/// crate guide for the crossover measurements.
#[derive(Clone, Debug)]
pub struct VectorIndex {
    flat: FlatIndex,
}

impl VectorIndex {
    /// An empty index for vectors of `dimension` components.
    pub fn new(dimension: usize) -> Self {
        Self {
            flat: FlatIndex::new(dimension),
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.flat.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.flat.is_empty()
    }

    /// Add or replace the vector of `id`.
    ///
    /// # Errors
    /// As [`FlatIndex::insert`].
    pub fn insert(&mut self, id: EntryId, vector: &[f32]) -> Result<()> {
        self.flat.insert(id, vector)
    }

    /// Remove `id`; returns whether it was there.
    pub fn remove(&mut self, id: &EntryId) -> bool {
        self.flat.remove(id)
    }

    /// The `limit` nearest rows with similarity at least `min_similarity`, best first.
    ///
    /// # Errors
    /// As [`FlatIndex::search`].
    pub fn search(
        &self,
        query: &[f32],
        limit: usize,
        min_similarity: f32,
    ) -> Result<Vec<Neighbor>> {
        self.flat.search(query, limit, min_similarity)
    }
}
