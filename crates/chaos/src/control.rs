//! [`LinkControl`]: the live link table of a run, shared by everything that crosses a link (the
//! copy saga driver, the tower layer on the coordinator's channels) and changed by the `Chaos`
//! service while the run goes on.
//!
//! It also owns the run's link seed: every random draw on a link comes from
//! [`LinkControl::rng`], a stream named by what draws (a copy, a channel), so a run replays from
//! its seed and adding one stream does not shift another.

use std::sync::{Arc, PoisonError, RwLock};

use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::link::{seeded_rng, LinkError, LinkModel, LinkSpec, LinkTable};

/// The shared, changeable link table (cheap to clone: clones share it).
#[derive(Debug, Clone)]
pub struct LinkControl {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    seed: u64,
    /// The table the run started with: what [`LinkControl::reset`] goes back to.
    initial: LinkTable,
    table: RwLock<LinkTable>,
    /// Bumped on every change, so a stalled copy or stream wakes up when a link heals.
    version: watch::Sender<u64>,
}

impl LinkControl {
    /// A control over `table` (validated by the caller), drawing from `seed`.
    pub fn new(table: LinkTable, seed: u64) -> Self {
        let (version, _) = watch::channel(0);
        LinkControl {
            inner: Arc::new(Inner {
                seed,
                initial: table.clone(),
                table: RwLock::new(table),
                version,
            }),
        }
    }

    /// The seed of every draw on the links.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// An RNG for the stream `key` (e.g. `copy/<copy id>`), from the seed.
    pub fn rng(&self, key: &str) -> ChaCha8Rng {
        seeded_rng(self.inner.seed, key)
    }

    /// The link from `from` to `to` now.
    pub fn get(&self, from: &str, to: &str) -> LinkModel {
        self.read().get(from, to)
    }

    /// The pair's own link now, if it is listed (for the coordinator↔region links, which the
    /// default does not cover).
    pub fn get_listed(&self, from: &str, to: &str) -> Option<LinkModel> {
        self.read().get_listed(from, to)
    }

    /// The whole table now.
    pub fn table(&self) -> LinkTable {
        self.read().clone()
    }

    /// Sets one pair's link (replacing its earlier one). Refuses an invalid model.
    pub fn set(&self, spec: LinkSpec) -> Result<(), LinkError> {
        let mut t = self.read().clone();
        t.set(spec);
        t.validate()?;
        self.replace(t);
        Ok(())
    }

    /// Sets the default link of every pair not listed.
    pub fn set_default(&self, model: LinkModel) -> Result<(), LinkError> {
        model.validate()?;
        let mut t = self.read().clone();
        t.default = model;
        self.replace(t);
        Ok(())
    }

    /// Clears one pair's own link (back to the default); true if it had one.
    pub fn clear(&self, from: &str, to: &str) -> bool {
        let mut t = self.read().clone();
        let had = t.clear(from, to);
        if had {
            self.replace(t);
        }
        had
    }

    /// Back to the table the run started with.
    pub fn reset(&self) {
        self.replace(self.inner.initial.clone());
    }

    /// A receiver that changes on every change of the table.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Waits until `from → to` is not partitioned.
    pub async fn healed(&self, from: &str, to: &str) {
        let mut rx = self.changes();
        loop {
            if !self.get(from, to).partitioned {
                return;
            }
            if rx.changed().await.is_err() {
                // Cannot happen while `self` holds the sender; never spin if it did.
                std::future::pending::<()>().await;
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, LinkTable> {
        self.inner
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn replace(&self, t: LinkTable) {
        *self
            .inner
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner) = t;
        self.inner.version.send_modify(|v| *v += 1);
    }
}

impl From<LinkTable> for LinkControl {
    /// A control over `table` with seed 0.
    fn from(table: LinkTable) -> Self {
        LinkControl::new(table, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_seen_by_every_clone_and_reset_restores_the_start() {
        let start = LinkTable::from_specs(["a-1:b-1=5,1".parse().unwrap()]).unwrap();
        let c = LinkControl::new(start.clone(), 42);
        let other = c.clone();
        let changes = other.changes();
        c.set("a-1:b-1=5,1,partition".parse().unwrap()).unwrap();
        assert!(other.get("a-1", "b-1").partitioned);
        assert!(changes.has_changed().unwrap());
        assert!(c.set("a-1:b-1=5,1,loss=0.5".parse().unwrap()).is_ok());
        assert!(c.clear("a-1", "b-1"));
        assert_eq!(c.get("a-1", "b-1"), LinkModel::default());
        c.reset();
        assert_eq!(c.table(), start);
        assert_eq!(c.seed(), 42);
    }

    #[tokio::test]
    async fn healed_waits_for_the_partition_to_go() {
        let c = LinkControl::new(LinkTable::new(), 1);
        c.set("a-1:b-1=5,1,partition".parse().unwrap()).unwrap();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.healed("a-1", "b-1").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        c.clear("a-1", "b-1");
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
