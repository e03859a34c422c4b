//! Checks a partition's offsets as its records arrive, so a record the client skipped is never
//! passed by a later commit.
//!
//! A partition starts at its committed offset (looked up on assignment) or, with no commit, at
//! the first record it is served. A record below the next expected offset was taken already and
//! is dropped. A record past it is a gap: the consumer seeks back for the records in between.
//! Apache Kafka answers a fetch with the whole batch that holds the requested offset, so one
//! seek to the gap's start is enough there. A broker that answers with the next batch *starting*
//! at or after the requested offset (tansu 0.6.0's object storage does, so a fetch that starts
//! inside a batch loses the rest of it) serves the same gap again; each time the seek goes back
//! twice as far (1, 2, 4, … records before the gap) until the fetch starts at or before the
//! batch's first record, and the records below the gap are dropped as already taken. Only past
//! [`MAX_REWIND`] records does the guard accept the gap as the broker having no records there
//! (compaction, transaction markers — or loss, which is logged as an error and counted).

/// How far before a gap the guard seeks at most before it accepts the gap.
pub(crate) const MAX_REWIND: i64 = 1 << 16;
/// Fetch starts remembered per partition.
const KNOWN_STARTS: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct OffsetGuard {
    /// The next offset to take; `None` until the first record when nothing was committed.
    next: Option<i64>,
    /// The gap being fetched again: where it starts and how far before it the last seek went.
    rewinding: Option<(i64, i64)>,
    /// A seek was made: the next record is where that fetch started.
    sought: bool,
    /// Offsets a fetch was seen to start at. On a broker that serves whole batches these are
    /// batch starts, so a later gap inside the same batch is fetched again in one seek.
    starts: std::collections::BTreeSet<i64>,
    /// This broker answers a fetch from inside a batch with the next batch (learnt from a gap
    /// that only a seek before its start could fill).
    whole_batches: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next record: hand it to the partition's worker.
    Take,
    /// Below the next expected offset: already taken.
    AlreadyTaken,
    /// A gap: seek to `to` and drop this record (it is fetched again after the gap).
    SeekBack { to: i64, skipped: u64, first_time: bool },
    /// The broker keeps serving the gap however far back the fetch starts: take this record and
    /// move past the `skipped` offsets before it.
    GapAccepted { from: i64, skipped: u64 },
}

impl OffsetGuard {
    pub fn starting_at(committed: Option<i64>) -> Self {
        OffsetGuard { next: committed.filter(|o| *o >= 0), ..Default::default() }
    }

    pub fn next_offset(&self) -> Option<i64> {
        self.next
    }

    fn learn_start(&mut self, offset: i64) {
        self.starts.insert(offset);
        while self.starts.len() > KNOWN_STARTS {
            self.starts.pop_first();
        }
    }

    pub fn arrive(&mut self, offset: i64) -> Arrival {
        if std::mem::take(&mut self.sought) {
            self.learn_start(offset);
        }
        let next = match self.next {
            Some(next) if offset < next => return Arrival::AlreadyTaken,
            Some(next) if offset > next => next,
            _ => {
                // Filled only by a fetch from before the gap: this broker serves whole batches.
                if self.rewinding.take().is_some_and(|(gap, distance)| distance > 0 && gap > 0) {
                    self.whole_batches = true;
                }
                self.next = Some(offset + 1);
                return Arrival::Take;
            }
        };
        // A fetch that skipped records started at this record: remember it.
        self.learn_start(offset);
        let skipped = (offset - next) as u64;
        let first_time = self.rewinding.is_none_or(|(gap, _)| gap != next);
        match self.seek_for_gap_at(next) {
            Some(to) => Arrival::SeekBack { to, skipped, first_time },
            None => {
                self.next = Some(offset + 1);
                Arrival::GapAccepted { from: next, skipped }
            }
        }
    }

    /// The broker has records past the next offset, yet none arrive (a fetch from inside the
    /// partition's last batch, on a broker that serves whole batches, returns nothing): where
    /// to fetch from instead, searched like a gap whose record never came. `None` when nothing
    /// is expected or the search is exhausted.
    pub fn stalled(&mut self) -> Option<i64> {
        let next = self.next?;
        self.seek_for_gap_at(next)
    }

    /// Fetching resumes after a pause: on a broker known to serve whole batches, from the start
    /// of the batch that holds the next offset (a fetch from the next offset itself would skip
    /// the rest of that batch, or return nothing if it is the last one).
    pub fn resume_at(&mut self) -> Option<i64> {
        let next = self.next?;
        if !self.whole_batches {
            return None;
        }
        let start = *self.starts.range(..next).next_back()?;
        self.rewinding = Some((next, next - start));
        self.sought = true;
        Some(start)
    }

    /// The next seek for a gap at `next`: at the gap, then 1, 2, 4, … before it (or straight to
    /// the known batch start on a broker that serves whole batches). `None` past [`MAX_REWIND`].
    fn seek_for_gap_at(&mut self, next: i64) -> Option<i64> {
        let distance = match self.rewinding {
            Some((gap, distance)) if gap == next => (distance * 2).max(1),
            // A new gap on a broker known to serve whole batches: go straight to the latest
            // fetch start before it, which is the start of the batch holding the gap.
            _ if self.whole_batches => self.starts.range(..next).next_back().map_or(0, |start| next - start),
            _ => 0,
        };
        if distance > MAX_REWIND {
            self.rewinding = None;
            return None;
        }
        self.rewinding = Some((next, distance));
        self.sought = true;
        Some((next - distance).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_are_taken_and_repeats_dropped() {
        let mut guard = OffsetGuard::starting_at(Some(10));
        assert_eq!(guard.arrive(10), Arrival::Take);
        assert_eq!(guard.arrive(11), Arrival::Take);
        assert_eq!(guard.arrive(11), Arrival::AlreadyTaken);
        assert_eq!(guard.arrive(3), Arrival::AlreadyTaken);
        assert_eq!(guard.next_offset(), Some(12));
    }

    #[test]
    fn without_a_commit_the_first_record_sets_the_start() {
        let mut guard = OffsetGuard::starting_at(None);
        assert_eq!(guard.arrive(42), Arrival::Take);
        assert_eq!(guard.next_offset(), Some(43));
        assert_eq!(OffsetGuard::starting_at(Some(-1001)).next_offset(), None);
    }

    #[test]
    fn a_gap_at_the_committed_offset_is_fetched_again_from_the_gap() {
        let mut guard = OffsetGuard::starting_at(Some(100));
        assert_eq!(guard.arrive(105), Arrival::SeekBack { to: 100, skipped: 5, first_time: true });
        // Apache Kafka serves the batch holding 100; the records before it are dropped.
        assert_eq!(guard.arrive(98), Arrival::AlreadyTaken);
        assert_eq!(guard.arrive(100), Arrival::Take);
    }

    #[test]
    fn a_broker_that_serves_the_next_batch_is_asked_ever_further_back() {
        // Batches start at 0 and 90; the committed offset 100 lies inside the second, which such
        // a broker only serves when the fetch starts at or before 90.
        let serve = |from: i64| if from <= 90 { 90 } else { 120 };
        let mut guard = OffsetGuard::starting_at(Some(100));
        let mut first = serve(100);
        let mut seeks = vec![];
        loop {
            match guard.arrive(first) {
                Arrival::SeekBack { to, .. } => {
                    seeks.push(to);
                    first = serve(to);
                }
                Arrival::AlreadyTaken => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seeks, vec![100, 99, 98, 96, 92, 84]);
        assert_eq!(guard.arrive(100), Arrival::Take, "the record at the gap is taken after the refetch");
        assert_eq!(guard.arrive(101), Arrival::Take);

        // A pause: the next fetch starts at 102, inside the batch at 90, and is answered with
        // the batch at 120. The guard now knows where that batch starts: one seek.
        assert_eq!(guard.arrive(120), Arrival::SeekBack { to: 90, skipped: 18, first_time: true });
        assert_eq!(guard.arrive(90), Arrival::AlreadyTaken);
        assert_eq!(guard.arrive(102), Arrival::Take);
        // Inside the batch at 120 (learnt from the gap's record), the next gap seeks there.
        for offset in 103..125 {
            assert_eq!(guard.arrive(offset), Arrival::Take);
        }
        assert_eq!(guard.arrive(150), Arrival::SeekBack { to: 120, skipped: 25, first_time: true });
    }

    #[test]
    fn a_gap_served_however_far_back_the_fetch_starts_is_accepted() {
        let mut guard = OffsetGuard::starting_at(Some(1_000_000));
        let mut seeks = 0;
        let accepted = loop {
            match guard.arrive(1_000_007) {
                Arrival::SeekBack { .. } => seeks += 1,
                other => break other,
            }
        };
        assert_eq!(accepted, Arrival::GapAccepted { from: 1_000_000, skipped: 7 });
        assert_eq!(seeks, 18, "the gap itself, then 1, 2, 4, … up to {MAX_REWIND} before it");
        assert_eq!(guard.arrive(1_000_008), Arrival::Take);
    }

    #[test]
    fn a_stalled_partition_is_searched_like_a_gap_and_a_resume_starts_at_the_batch() {
        // Batches at 0 and 50; the committed offset 60 is inside the last one, so a fetch from
        // 60 returns nothing at all.
        let serve = |from: i64| if from <= 50 { Some(50) } else { None };
        let mut guard = OffsetGuard::starting_at(Some(60));
        let mut first = None;
        let mut seeks = vec![];
        while first.is_none() {
            let to = guard.stalled().expect("searching");
            seeks.push(to);
            first = serve(to);
        }
        assert_eq!(seeks, vec![60, 59, 58, 56, 52, 44]);
        assert_eq!(guard.arrive(50), Arrival::AlreadyTaken);
        assert_eq!(guard.arrive(60), Arrival::Take);
        assert_eq!(guard.arrive(61), Arrival::Take);
        // Paused at 62 and resumed: straight back to the batch's start.
        assert_eq!(guard.resume_at(), Some(50));
        assert_eq!(guard.arrive(50), Arrival::AlreadyTaken);
        assert_eq!(guard.arrive(62), Arrival::Take);
        // On a broker that serves from any offset nothing is done on resume.
        let mut plain = OffsetGuard::starting_at(Some(5));
        assert_eq!(plain.arrive(5), Arrival::Take);
        assert_eq!(plain.resume_at(), None);
        assert_eq!(OffsetGuard::starting_at(None).stalled(), None, "nothing expected yet");
    }

    #[test]
    fn a_new_gap_starts_the_search_again() {
        let mut guard = OffsetGuard::starting_at(Some(0));
        assert!(matches!(guard.arrive(5), Arrival::SeekBack { to: 0, .. }));
        assert!(matches!(guard.arrive(5), Arrival::SeekBack { to: 0, first_time: false, .. }));
        assert_eq!(guard.arrive(0), Arrival::Take);
        assert_eq!(guard.arrive(1), Arrival::Take);
        assert_eq!(guard.arrive(9), Arrival::SeekBack { to: 2, skipped: 7, first_time: true });
    }
}
