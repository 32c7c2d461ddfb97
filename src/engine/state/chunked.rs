//! [`Chunked`]: a vector kept in shared chunks, so that copying it for a snapshot costs one
//! reference count per chunk instead of a copy of every element.
//!
//! The driver table is the largest part of the state (100k records at city scale) and the
//! dispatcher copies the state at a group boundary for each snapshot. A plain `Vec` clone of
//! it took ~13 ms there (`cargo bench --bench snapshot`), all of it a pause of the dispatcher.
//! With chunks the copy is O(n / CHUNK); the cost moves to the first write into each chunk
//! while the snapshot thread still holds the copy (one chunk copied, ~100 kB), spread over the
//! events that follow and bounded by one full copy per snapshot.

use std::ops::{Index, IndexMut};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Elements per chunk.
const CHUNK: usize = 1024;

/// See the module docs. Indexing is O(1); `Clone` is O(n / 1024).
#[derive(Clone, Debug, Default)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T: Clone> Chunked<T> {
    pub(crate) fn new() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self
            .chunks
            .last_mut()
            .expect("a chunk with room was just made sure of");
        Arc::make_mut(last).push(value);
        self.len += 1;
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// A write into a chunk a snapshot copy still shares copies that chunk first.
impl<T: Clone> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut Arc::make_mut(&mut self.chunks[i / CHUNK])[i % CHUNK]
    }
}

impl<'a, T: Clone> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = Box<dyn Iterator<Item = &'a T> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<T: Clone> FromIterator<T> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut out = Chunked::new();
        for value in iter {
            out.push(value);
        }
        out
    }
}

/// Serialized as a plain sequence (the chunking is not part of the format).
impl<T: Clone + Serialize> Serialize for Chunked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length up front: postcard (like most compact formats) needs it.
        let mut seq = s.serialize_seq(Some(self.len))?;
        for value in self.iter() {
            seq.serialize_element(value)?;
        }
        seq.end()
    }
}

impl<'de, T: Clone + Deserialize<'de>> Deserialize<'de> for Chunked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_chunks_until_one_is_written() {
        let mut v: Chunked<u32> = (0..3000).collect();
        let copy = v.clone();
        v[5] = 99;
        v[2999] = 7;
        v.push(3000);
        assert_eq!((v[5], copy[5]), (99, 5));
        assert_eq!((v[2999], copy[2999]), (7, 2999));
        assert_eq!((v.len(), copy.len()), (3001, 3000));
        assert!(
            Arc::ptr_eq(&v.chunks[1], &copy.chunks[1]),
            "an untouched chunk is shared"
        );
        assert_eq!(
            copy.iter().copied().collect::<Vec<_>>(),
            (0..3000).collect::<Vec<_>>()
        );
        let bytes = postcard::to_allocvec(&copy).unwrap();
        let back: Chunked<u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            copy.iter().collect::<Vec<_>>()
        );
    }
}
