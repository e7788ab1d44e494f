//! Consumers of the `events` outbox that miss no event committed late.
//!
//! Event ids come from a sequence (PostgreSQL) or an auto-increment counter (MariaDB): a
//! transaction takes its id when it inserts and others may commit higher ids before it does,
//! so `id > cursor` alone would skip an event whose transaction commits after a later one was
//! read. A rolled-back transaction leaves its id missing for good. (SQLite has one writer at
//! a time and hands out ids in commit order; gaps do no harm there either.)
//!
//! [`GapTracker`] is the bookkeeping: `position` is the cursor (every id up to it was handled
//! or given up on), `frontier` the highest id handled. Ids between the two that have not been
//! seen are the gaps, kept as ranges with the time they were first noticed; every other id in
//! that window was handled in this process (the "seen" set is the window minus the gaps, which
//! keeps memory in proportion to the gaps, not to the events). Each poll asks for what is
//! inside the gaps and for what is beyond the frontier; the position advances across handled
//! ids and steps past a gap only once it stayed missing for the gap timeout.
//!
//! Guarantees: in one process no event is returned again once acknowledged. Across restarts
//! delivery is at least once (events between the stored cursor and the frontier come again).
//! Events are handled in id order except those that fill a gap, which come when they commit.
//! An event whose transaction commits more than the gap timeout after a later id was seen is
//! missed: the timeout bounds how long a transaction that wrote an event may stay open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::storage::jobs::{EventRecord, JobStore};
use crate::storage::StoreError;

/// Most gap ranges one poll looks into (the oldest first); the others wait for the next poll.
const MAX_GAP_QUERIES: usize = 64;

/// Which outbox ids were handled, and which are missing (see the module comment).
#[derive(Debug, Clone)]
pub struct GapTracker {
    frontier: i64,
    /// Missing ids: start -> (end, inclusive; when first noticed).
    gaps: BTreeMap<i64, (i64, Instant)>,
    timeout: Duration,
}

impl GapTracker {
    /// Start at stored cursor `position` (everything up to it handled).
    pub fn new(position: i64, timeout: Duration) -> Self {
        Self {
            frontier: position,
            gaps: BTreeMap::new(),
            timeout,
        }
    }

    /// Every id up to this was handled or given up on: what the stored cursor may say.
    pub fn position(&self) -> i64 {
        self.gaps.keys().next().map_or(self.frontier, |start| start - 1)
    }

    /// The highest id handled.
    pub fn frontier(&self) -> i64 {
        self.frontier
    }

    /// The missing ranges (first, last; inclusive), lowest first.
    pub fn gaps(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.gaps.iter().map(|(start, (end, _))| (*start, *end))
    }

    /// How many ids are missing.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|(start, (end, _))| (end - start + 1) as u64).sum()
    }

    fn gap_of(&self, id: i64) -> Option<i64> {
        let (start, (end, _)) = self.gaps.range(..=id).next_back()?;
        (id <= *end).then_some(*start)
    }

    /// Whether `id` has not been handled yet.
    pub fn is_new(&self, id: i64) -> bool {
        id > self.frontier || self.gap_of(id).is_some()
    }

    /// Record that event `id` was handled (at `now`). Ids skipped over by a higher one become
    /// a gap noticed now.
    pub fn handled(&mut self, id: i64, now: Instant) {
        if id > self.frontier {
            if id > self.frontier + 1 {
                self.gaps.insert(self.frontier + 1, (id - 1, now));
            }
            self.frontier = id;
        } else if let Some(start) = self.gap_of(id) {
            if let Some((end, since)) = self.gaps.remove(&start) {
                if start < id {
                    self.gaps.insert(start, (id - 1, since));
                }
                if id < end {
                    self.gaps.insert(id + 1, (end, since));
                }
            }
        }
    }

    /// Give up on the gaps missing for the timeout or longer; returns how many ids that was.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let old: Vec<(i64, i64)> = self
            .gaps
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) >= self.timeout)
            .map(|(start, (end, _))| (*start, *end))
            .collect();
        let mut given_up = 0;
        for (start, end) in old {
            self.gaps.remove(&start);
            given_up += (end - start + 1) as u64;
        }
        given_up
    }
}

/// A named consumer of the outbox: its cursor is a row of `outbox_cursors`, shared by the
/// replicas that run it (each moves it forward only).
pub struct OutboxConsumer {
    store: Arc<dyn JobStore>,
    name: String,
    gap_timeout: Duration,
    batch: u32,
    /// Loaded from the stored cursor on the first poll.
    tracker: Option<GapTracker>,
    stored: i64,
}

impl OutboxConsumer {
    pub fn new(store: Arc<dyn JobStore>, name: &str, gap_timeout: Duration) -> Self {
        Self {
            store,
            name: name.to_string(),
            gap_timeout,
            batch: 500,
            tracker: None,
            stored: 0,
        }
    }

    /// At most `batch` events from beyond the frontier per poll (and as many from each gap).
    pub fn with_batch(mut self, batch: u32) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bookkeeping, once the first poll loaded it.
    pub fn tracker(&self) -> Option<&GapTracker> {
        self.tracker.as_ref()
    }

    /// Events not handled yet in this process, in id order: those that filled a gap, then
    /// those beyond the frontier. Acknowledge each with [`Self::ack`] once handled; those not
    /// acknowledged come again.
    pub async fn poll(&mut self) -> Result<Vec<EventRecord>, StoreError> {
        if self.tracker.is_none() {
            let start = self.store.cursor_get(&self.name).await?.unwrap_or(0);
            self.stored = start;
            self.tracker = Some(GapTracker::new(start, self.gap_timeout));
        }
        let Some(tracker) = self.tracker.as_mut() else {
            return Ok(Vec::new());
        };
        let given_up = tracker.expire(Instant::now());
        if given_up > 0 {
            tracing::debug!(consumer = %self.name, ids = given_up, "outbox: stepped past ids that stayed missing (rolled-back transactions)");
        }
        let mut out = Vec::new();
        let gaps: Vec<(i64, i64)> = tracker.gaps().take(MAX_GAP_QUERIES).collect();
        for (first, last) in gaps {
            out.extend(self.store.events_between(first - 1, last, self.batch).await?);
        }
        out.extend(self.store.events_after(tracker.frontier(), self.batch).await?);
        out.retain(|e| tracker.is_new(e.id));
        out.sort_by_key(|e| e.id);
        out.dedup_by_key(|e| e.id);
        Ok(out)
    }

    /// Event `id` was handled.
    pub fn ack(&mut self, id: i64) {
        if let Some(t) = &mut self.tracker {
            t.handled(id, Instant::now());
        }
    }

    /// Store the position if it moved.
    pub async fn commit(&mut self) -> Result<(), StoreError> {
        let Some(t) = &mut self.tracker else { return Ok(()) };
        t.expire(Instant::now());
        let position = t.position();
        if position > self.stored {
            self.store.cursor_set(&self.name, position).await?;
            self.stored = position;
        }
        Ok(())
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub jobs: u64,
}

/// Delete the events more than `retention` ids below the slowest consumer's cursor (none
/// while no consumer has a cursor), and done jobs that finished before `done_before` (ms).
pub async fn prune(store: &dyn JobStore, retention: u64, done_before: i64) -> Result<Pruned, StoreError> {
    let mut out = Pruned::default();
    let slowest = store.cursors().await?.into_iter().map(|(_, p)| p).min();
    if let Some(slowest) = slowest {
        let keep_after = slowest.saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
        if keep_after > 0 {
            out.events = store.prune_events(keep_after).await?;
        }
    }
    out.jobs = store.prune_jobs(done_before).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn contiguous_ids_advance_the_position() {
        let now = Instant::now();
        let mut g = GapTracker::new(5, T);
        assert!(!g.is_new(5));
        for id in 6..=9 {
            assert!(g.is_new(id));
            g.handled(id, now);
            assert!(!g.is_new(id));
        }
        assert_eq!((g.position(), g.frontier(), g.missing()), (9, 9, 0));
    }

    #[test]
    fn a_gap_holds_the_position_until_filled() {
        let now = Instant::now();
        let mut g = GapTracker::new(0, T);
        g.handled(1, now);
        g.handled(4, now); // 2 and 3 not committed yet
        g.handled(5, now);
        assert_eq!(g.position(), 1);
        assert_eq!(g.gaps().collect::<Vec<_>>(), vec![(2, 3)]);
        assert!(g.is_new(2) && g.is_new(3) && !g.is_new(4) && !g.is_new(5) && g.is_new(6));
        g.handled(3, now);
        assert_eq!(g.gaps().collect::<Vec<_>>(), vec![(2, 2)]);
        assert_eq!(g.position(), 1);
        g.handled(2, now);
        assert_eq!((g.position(), g.missing()), (5, 0));
        // Handling an id again changes nothing.
        g.handled(3, now);
        assert_eq!((g.position(), g.frontier()), (5, 5));
    }

    #[test]
    fn filling_the_middle_of_a_gap_splits_it() {
        let now = Instant::now();
        let mut g = GapTracker::new(10, T);
        g.handled(20, now);
        g.handled(15, now);
        assert_eq!(g.gaps().collect::<Vec<_>>(), vec![(11, 14), (16, 19)]);
        assert_eq!(g.missing(), 8);
        assert_eq!(g.position(), 10);
        for id in 11..=14 {
            g.handled(id, now);
        }
        assert_eq!(g.position(), 15);
    }

    #[test]
    fn a_gap_is_stepped_past_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut g = GapTracker::new(0, T);
        g.handled(1, t0);
        g.handled(3, t0); // 2 rolled back
        assert_eq!(g.expire(t0 + Duration::from_secs(9)), 0);
        assert_eq!(g.position(), 1);
        // A later gap has its own clock.
        g.handled(6, t0 + Duration::from_secs(5));
        assert_eq!(g.expire(t0 + T), 1);
        assert_eq!(g.position(), 3);
        assert!(!g.is_new(2), "a given-up id is never handed out");
        assert_eq!(g.expire(t0 + Duration::from_secs(14)), 0);
        assert_eq!(g.expire(t0 + Duration::from_secs(15)), 2);
        assert_eq!(g.position(), 6);
    }

    #[test]
    fn each_split_part_keeps_the_time_its_gap_was_noticed() {
        let t0 = Instant::now();
        let mut g = GapTracker::new(0, T);
        g.handled(10, t0);
        g.handled(5, t0 + Duration::from_secs(8));
        assert_eq!(g.expire(t0 + T), 8);
        assert_eq!((g.position(), g.missing()), (10, 0));
    }
}
