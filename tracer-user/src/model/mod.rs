//! The model: judges a stream of [`Event`]s against the mm locking rules.
//!
//! Pure on purpose — no aya, no async, no I/O — so a live run and `vmalock check` of its
//! recording feed the same events through the same code and reach the same verdicts.

mod fasthash;
mod lockorder;
mod mmap_lock;
mod rules;
mod verdict;
mod vma;

use std::collections::BTreeMap;

use fasthash::FastMap;

use serde::Serialize;

use crate::event::{Event, What, kind_name};
pub use lockorder::{ChainLink, DOCUMENTED_ORDER, Graph};
pub use mmap_lock::Mode;
pub use rules::{Availability, RULES, Rule, Status, lock_order_classes, rule};
pub use vma::UNLOCKED_FLAG_BITS;
pub use verdict::{TaskRef, Verdict};

/// Counters for summaries and for judging how much the verdicts can be trusted.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Events seen, by kind.
    pub events: KindCounts,
    /// Events the kernel dropped (ring buffer full), as reported by later events.
    pub lost_events: u64,
    /// Hook hits the kernel skipped (BPF recursion protection), from `Missed` markers.
    pub missed_events: u64,
    /// Verdicts not reported because they fell in a stretch with skipped hook hits.
    pub suppressed_verdicts: u64,
    /// Times all per-task state was forgotten because of lost or missed events.
    pub resyncs: u64,
    /// Read releases credited to another task's hold (mmap_read_unlock_non_owner).
    pub non_owner_releases: u64,
    /// Releases of locks presumably taken before tracing started: not judged.
    pub pre_existing_releases: u64,
    /// Tasks forgotten to stay under the tracked-task cap (their exits were probably missed).
    pub evicted_tasks: u64,
    /// Verdicts, by rule id.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Tasks whose state is kept now.
    pub tasks_tracked: usize,
}

/// Events seen, by kind: a short list scanned by kind number, because a map keyed by name cost a
/// visible share of a replay when updated on every event. Reads and serializes as a map of
/// `crate::event::kind_name` → count, ordered by name.
#[derive(Debug, Default, Clone)]
pub struct KindCounts(Vec<(u16, u64)>);

impl KindCounts {
    fn count(&mut self, kind: u16) {
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind, 1)),
        }
    }

    /// (kind name, count), ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + use<> {
        let by_name: BTreeMap<&'static str, u64> = self.0.iter().map(|&(k, n)| (kind_name(k), n)).collect();
        by_name.into_iter()
    }

    /// The count of the kind named `name` (0 if none was seen).
    pub fn get(&self, name: &str) -> u64 {
        self.0.iter().filter(|(k, _)| kind_name(*k) == name).map(|(_, n)| n).sum()
    }
}

impl Serialize for KindCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[derive(Debug, Default)]
pub struct Model {
    mmap_locks: mmap_lock::MmapLocks,
    vma_rules: vma::VmaRules,
    lock_order: lockorder::LockOrder,
    /// Kernel stacks by id, from the stream's `stack` lines.
    stacks: FastMap<u32, Vec<String>>,
    stats: Stats,
    /// Events left in a stretch where the kernel skipped hook hits (see `What::Missed`): state
    /// is rebuilt there but nothing is judged, and it is forgotten again at the end.
    blind: u64,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges one event, appending any verdicts it proves to `out`.
    pub fn apply(&mut self, ev: &Event, out: &mut Vec<Verdict>) {
        self.stats.events.count(ev.kind());
        match &ev.what {
            What::Missed { count, span } => {
                // The skipped hits lie somewhere in the next `span` events: forget now, judge
                // nothing until the stretch ends, then forget what was learned inside it.
                self.stats.missed_events += count;
                self.resync();
                self.blind = *span;
                return;
            }
            What::Stack { id, frames } => {
                self.stacks.insert(*id, frames.clone());
                return;
            }
            _ => {}
        }
        let first_new = out.len();
        // The VMA rules read the mmap_lock state as it was before this event.
        self.vma_rules.apply(ev, &self.mmap_locks, out);
        self.mmap_locks.apply(ev, &mut self.stats, out);
        self.lock_order.set_blind(self.blind > 0);
        self.lock_order.apply(ev, out);
        if self.blind > 0 {
            self.stats.suppressed_verdicts += (out.len() - first_new) as u64;
            out.truncate(first_new);
            self.blind -= 1;
            if self.blind == 0 {
                self.resync();
            }
        }
        for v in &mut out[first_new..] {
            *self.stats.verdicts.entry(v.rule).or_default() += 1;
            if let Some(frames) = ev.stack.and_then(|id| self.stacks.get(&id)) {
                v.stack = frames.clone();
            }
            for l in &mut v.chain {
                self.symbolize(l);
            }
        }
        self.stats.tasks_tracked = self.mmap_locks.tasks_tracked();
    }

    fn resync(&mut self) {
        self.mmap_locks.resync(&mut self.stats);
        self.vma_rules.forget();
        self.lock_order.forget();
    }

    fn symbolize(&self, l: &mut ChainLink) {
        let frames = |id: Option<u32>| id.and_then(|id| self.stacks.get(&id)).cloned().unwrap_or_default();
        l.held_stack = frames(l.held_stack_id);
        l.taken_stack = frames(l.taken_stack_id);
    }

    /// Locks of the other classes (VMA lock, i_mmap_rwsem, anon_vma, i_rwsem) each task holds
    /// now, as the lock-order model follows them: (task, "class 0xaddr mode" names).
    pub fn held_other(&self) -> impl Iterator<Item = (TaskRef, Vec<String>)> + '_ {
        self.lock_order.held_other()
    }

    /// Lock-order edges learned so far, in the order first seen: (held lock, taken lock, the
    /// acquisition of each). Index with `skip` to get only the ones new since the last call.
    pub fn lock_order_edges(&self) -> impl ExactSizeIterator<Item = (String, String, &Event, &Event)> + '_ {
        self.lock_order
            .edges()
            .iter()
            .map(|e| (e.from.to_string(), e.to.to_string(), &e.witness.held, &e.witness.taken))
    }

    /// The lock-order graph learned so far, with the stacks of every edge symbolized.
    pub fn lock_graph(&self) -> Graph {
        let mut g = self.lock_order.graph();
        for l in g.edges.iter_mut().chain(g.cycles.iter_mut().flat_map(|c| c.edges.iter_mut())) {
            self.symbolize(l);
        }
        g
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The mmap_locks each task holds now: (mm, mode, nesting count), in no particular order.
    pub fn held(&self) -> impl Iterator<Item = (TaskRef, Vec<(u64, Mode, u32)>)> + '_ {
        self.mmap_locks.held()
    }

    /// Tasks waiting for an mmap_lock now: (task, mm, mode, waiting since ts_ns).
    pub fn waiting(&self) -> impl Iterator<Item = (TaskRef, u64, Mode, u64)> + '_ {
        self.mmap_locks.waiting()
    }
}

#[cfg(test)]
impl Model {
    fn with_max_tasks(max_tasks: usize) -> Self {
        Model {
            mmap_locks: mmap_lock::MmapLocks::with_max_tasks(max_tasks),
            ..Default::default()
        }
    }
}
