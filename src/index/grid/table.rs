//! The grid's map from cell key to the cell's drivers: an open-addressing (linear probing)
//! table that stores each cell's array header in the bucket itself.
//!
//! Why not a `HashMap<u64, u32>` into a slab of cells: at a million drivers nearly every cell a
//! query touches is a cache miss, and that layout costs four dependent misses per cell (control
//! bytes, bucket, slab entry, array). Here it is two (bucket, array). The bucket index also
//! keeps eight consecutive columns of a band in eight consecutive buckets, so the row of cells
//! a query reads in a band shares cache lines.

use super::Entry;

/// Key of an empty bucket; no cell has it (bands are far fewer than 2^32 - 1).
pub(super) const EMPTY: u64 = u64::MAX;

/// One bucket: a cell key and its drivers (empty vector when the bucket is free).
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) key: u64,
    pub(super) entries: Vec<Entry>,
}

impl Bucket {
    fn empty() -> Self {
        Bucket {
            key: EMPTY,
            entries: Vec::new(),
        }
    }
}

/// Cell key -> drivers, load factor at most 1/2.
#[derive(Debug)]
pub(super) struct CellTable {
    buckets: Vec<Bucket>,
    len: usize,
}

const MIN_BUCKETS: usize = 16;

impl CellTable {
    pub(super) fn new() -> Self {
        CellTable {
            buckets: (0..MIN_BUCKETS).map(|_| Bucket::empty()).collect(),
            len: 0,
        }
    }

    /// Number of occupied cells.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// All buckets, free ones included (key [`EMPTY`]).
    pub(super) fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    pub(super) fn bucket(&self, i: usize) -> &Bucket {
        &self.buckets[i]
    }

    pub(super) fn bucket_mut(&mut self, i: usize) -> &mut Bucket {
        &mut self.buckets[i]
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// Home bucket of `key`: a hash of (band, column / 8) picks an aligned group of eight
    /// buckets, the column's low three bits the bucket inside it.
    #[inline]
    fn home(&self, key: u64) -> usize {
        let band = key >> 32;
        let col = key & 0xffff_ffff;
        let h = (band.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (col >> 3))
            .wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let bits = self.buckets.len().trailing_zeros();
        // bits >= 4, so the shift is in 1..=63.
        let group = (h >> (64 - bits + 3)) as usize;
        ((group << 3) | (col & 7) as usize) & self.mask()
    }

    /// Bucket index of `key`, if present.
    ///
    /// # Runtime
    /// O(1) expected.
    #[inline]
    pub(super) fn find(&self, key: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let k = self.buckets[i].key;
            if k == key {
                return Some(i);
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Bucket index of `key`, inserting it (with a vector from `spare` if any) if absent.
    ///
    /// # Runtime
    /// O(1) expected, amortised over growth.
    pub(super) fn find_or_insert(&mut self, key: u64, spare: &mut Vec<Vec<Entry>>) -> usize {
        if let Some(i) = self.find(key) {
            return i;
        }
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        let i = self.free_slot(key);
        let b = &mut self.buckets[i];
        b.key = key;
        b.entries = spare.pop().unwrap_or_default();
        self.len += 1;
        i
    }

    /// First free bucket on `key`'s probe sequence.
    fn free_slot(&self, key: u64) -> usize {
        let mask = self.mask();
        let mut i = self.home(key);
        while self.buckets[i].key != EMPTY {
            i = (i + 1) & mask;
        }
        i
    }

    fn grow(&mut self) {
        let doubled = (0..self.buckets.len() * 2)
            .map(|_| Bucket::empty())
            .collect();
        let old = std::mem::replace(&mut self.buckets, doubled);
        for b in old {
            if b.key != EMPTY {
                let i = self.free_slot(b.key);
                self.buckets[i] = b;
            }
        }
    }

    /// Frees bucket `i` and returns its (empty or not) vector. Later buckets of the probe run
    /// shift back so every key stays reachable from its home without tombstones.
    ///
    /// # Runtime
    /// O(1) expected.
    pub(super) fn remove_at(&mut self, mut i: usize) -> Vec<Entry> {
        let mask = self.mask();
        let entries = std::mem::take(&mut self.buckets[i].entries);
        self.buckets[i].key = EMPTY;
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let k = self.buckets[j].key;
            if k == EMPTY {
                break;
            }
            // The bucket at j may fill the hole at i unless i lies before its home.
            let h = self.home(k);
            if (j.wrapping_sub(i) & mask) <= (j.wrapping_sub(h) & mask) {
                self.buckets.swap(i, j);
                i = j;
            }
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DriverKey, LatLng};
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    #[test]
    fn matches_a_hash_map_through_growth_and_backward_shift_deletes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut table = CellTable::new();
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut spare = Vec::new();
        let pos = LatLng::new(0.0, 0.0).unwrap();
        for step in 0..40_000u32 {
            // Few bands and columns, so keys collide on homes and runs get long.
            let key = (rng.random_range(0..6u64) << 32) | rng.random_range(0..400u64);
            if rng.random_bool(0.45) {
                if let Some(i) = table.find(key) {
                    table.remove_at(i);
                }
                model.remove(&key);
            } else {
                let i = table.find_or_insert(key, &mut spare);
                let b = table.bucket_mut(i);
                b.entries.clear();
                b.entries.push(Entry {
                    pos,
                    key: DriverKey(step),
                });
                model.insert(key, step);
            }
            assert_eq!(table.len(), model.len());
        }
        for band in 0..6u64 {
            for col in 0..400u64 {
                let key = (band << 32) | col;
                let got = table.find(key).map(|i| table.bucket(i).entries[0].key.0);
                assert_eq!(got, model.get(&key).copied(), "key {band}/{col}");
            }
        }
    }
}
