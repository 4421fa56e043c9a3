//! Lock-order edges for exports: "a task took lock B while holding lock A", drawn as flow
//! arrows between the two acquisitions.
//!
//! Exports take edges through [`OrderEdges`]: [`ModelEdges`] gives the lock-order model's edges
//! (every lock class it knows), [`NestedHolds`] the nested mmap_lock pairs alone, cheaply
//! enough for the dashboard's ingest path.

use std::collections::{HashMap, HashSet};

use crate::event::{Event, What};
use crate::model::Model;

/// The lock-order model's own edges, each the first time the model learns it: the model runs
/// over the same events (the export's pass is the replay).
#[derive(Default)]
pub struct ModelEdges {
    model: Model,
    verdicts: Vec<crate::model::Verdict>,
    known: usize,
}

/// The lock an acquisition event takes: the mm for an mmap_lock, the lock's own address else.
fn lock_of(ev: &Event) -> u64 {
    match &ev.what {
        What::LockAcquire { lock, .. } => *lock,
        What::MmapLockAcquired { mm, .. } | What::MmapLockStart { mm, .. } => *mm,
        What::VmaWriteLock { vma, .. } => *vma,
        _ => 0,
    }
}

impl OrderEdges for ModelEdges {
    fn observe(&mut self, ev: &Event, out: &mut Vec<OrderEdge>) {
        self.model.apply(ev, &mut self.verdicts);
        self.verdicts.clear();
        new_edges(&self.model, &mut self.known, out);
    }
}

/// Appends the lock-order edges `model` learned after the first `*known` (and counts them in):
/// one length check per event when nothing is new.
pub fn new_edges(model: &Model, known: &mut usize, out: &mut Vec<OrderEdge>) {
    let edges = model.lock_order_edges();
    if edges.len() == *known {
        return;
    }
    let skip = *known;
    *known = edges.len();
    let site = |e: &Event| Site { pid: e.tgid, tid: e.tid, ts_ns: e.ts_ns };
    out.extend(edges.skip(skip).map(|(from, to, held, taken)| OrderEdge {
        from: site(held),
        to: site(taken),
        locks: (lock_of(held), lock_of(taken)),
        label: format!("{from} -> {to}"),
    }));
}

/// Where and when a lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
}

/// `from` (holding) was held when `to` was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderEdge {
    pub from: Site,
    pub to: Site,
    /// The two locks (mm addresses for mmap_locks): `locks.0` held while `locks.1` was taken.
    pub locks: (u64, u64),
    /// Names the two locks, e.g. "mmap_lock 0x1 -> mmap_lock 0x2".
    pub label: String,
}

/// Anything that can tell lock-order edges from the event stream.
pub trait OrderEdges {
    /// Called with every event in trace order; appends the edges it proves to `out`.
    fn observe(&mut self, ev: &Event, out: &mut Vec<OrderEdge>);
}

/// Edges between mmap_locks of different mms held at once by one task, each ordered pair
/// reported once (its first occurrence).
///
/// Runs on the ingest path, so its state is small and bounded: per task the distinct mms held
/// (a nesting count each, not one entry per acquisition: a trace may lack releases), at most
/// `MAX_TASKS` tasks and `MAX_PAIRS` reported pairs.
#[derive(Default)]
pub struct NestedHolds {
    /// Per tid: (mm, nesting, when first taken), a handful at most.
    held: HashMap<u32, Vec<(u64, u32, u64)>>,
    seen: HashSet<(u64, u64)>,
}

const MAX_TASKS: usize = 65_536;
const MAX_PAIRS: usize = 65_536;

impl OrderEdges for NestedHolds {
    fn observe(&mut self, ev: &Event, out: &mut Vec<OrderEdge>) {
        // Every event goes through here on the live ingest path: the common cases (a task's
        // only lock, anything that is not an mmap_lock event) must stay a lookup or two.
        match &ev.what {
            What::MmapLockAcquired { mm, success: true, .. } => {
                if self.held.len() >= MAX_TASKS && !self.held.contains_key(&ev.tid) {
                    // Exits were missed: forget rather than grow.
                    self.held.clear();
                }
                let Self { held, seen } = self;
                let held = held.entry(ev.tid).or_default();
                for &(other, _, since) in held.iter().filter(|(m, ..)| m != mm) {
                    if seen.len() < MAX_PAIRS && seen.insert((other, *mm)) {
                        let site = |ts_ns| Site { pid: ev.tgid, tid: ev.tid, ts_ns };
                        out.push(OrderEdge {
                            from: site(since),
                            to: site(ev.ts_ns),
                            locks: (other, *mm),
                            label: format!("mmap_lock {other:#x} -> mmap_lock {mm:#x}"),
                        });
                    }
                }
                match held.iter_mut().find(|(m, ..)| m == mm) {
                    Some(h) => h.1 += 1,
                    None => held.push((*mm, 1, ev.ts_ns)),
                }
            }
            What::MmapLockReleased { mm, .. } => {
                if let Some(h) = self.held.get_mut(&ev.tid)
                    && let Some(i) = h.iter().position(|(m, ..)| m == mm)
                {
                    h[i].1 -= 1;
                    if h[i].1 == 0 {
                        h.swap_remove(i);
                    }
                }
            }
            What::TaskExit => {
                self.held.remove(&ev.tid);
            }
            // The trace may have holes here: forget rather than invent edges.
            What::Missed { .. } => self.held.clear(),
            _ => {}
        }
    }
}

/// No edges: for exports that should not draw any.
pub struct NoEdges;

impl OrderEdges for NoEdges {
    fn observe(&mut self, _: &Event, _: &mut Vec<OrderEdge>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(tid: u32, ts_ns: u64, what: What) -> Event {
        Event { ts_ns, cpu: 0, tid, tgid: tid, comm: "t".into(), task_new: true, lost_before: 0, loss_epoch: 0, stack: None, what }
    }
    fn acq(mm: u64) -> What {
        What::MmapLockAcquired { mm, write: false, success: true, vma_read: None, trylock: false }
    }
    fn rel(mm: u64) -> What {
        What::MmapLockReleased { mm, write: false }
    }

    #[test]
    fn nested_holds_of_two_mms_make_one_edge_each_way_once() {
        let mut n = NestedHolds::default();
        let mut out = Vec::new();
        for (i, w) in [acq(1), acq(2), rel(2), acq(2), rel(2), rel(1), acq(2), acq(1)].into_iter().enumerate() {
            n.observe(&ev(7, i as u64, w), &mut out);
        }
        let pairs: Vec<(u64, u64)> = out.iter().map(|e| e.locks).collect();
        assert_eq!(pairs, [(1, 2), (2, 1)]);
        assert_eq!((out[0].from.ts_ns, out[0].to.ts_ns), (0, 1));
    }

    #[test]
    fn unreleased_acquires_of_one_mm_stay_one_entry() {
        // A trace without releases (filtered, lost) must not make each event cost more.
        let mut n = NestedHolds::default();
        let mut out = Vec::new();
        for i in 0..10_000 {
            n.observe(&ev(7, i, acq(1)), &mut out);
        }
        assert_eq!(n.held[&7].len(), 1);
        assert!(out.is_empty());
    }
}
