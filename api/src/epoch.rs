//! The epoch of a cache kept across requests ([`crate::total`], [`crate::aggregates`]): bumped
//! to discard what the cache holds and whatever is being computed for it, which compares the
//! epoch it started in before storing.

use std::sync::atomic::{AtomicU64, Ordering};

/// A cache's epoch.
#[derive(Debug, Default)]
pub struct Epoch(AtomicU64);

impl Epoch {
    /// The epoch now.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Starts a new epoch. Synchronous, so a guard can call it when dropped.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// [`Self::bump`] now and again when the guard is dropped: held across a cleanup, so that
    /// nothing computed while rows were being deleted outlives it (whether the cleanup ends,
    /// fails or is abandoned).
    #[must_use]
    pub fn bump_around(&self) -> BumpOnDrop<'_> {
        self.bump();
        BumpOnDrop(self)
    }
}

/// See [`Epoch::bump_around`].
#[derive(Debug)]
pub struct BumpOnDrop<'a>(&'a Epoch);

impl Drop for BumpOnDrop<'_> {
    fn drop(&mut self) {
        self.0.bump();
    }
}
