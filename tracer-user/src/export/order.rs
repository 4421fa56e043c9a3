//! Lock-order edges for exports: "a task took lock B while holding lock A", drawn as flow
//! arrows between the two acquisitions.
//!
//! Exports take edges through [`OrderEdges`]: [`ModelEdges`] gives the lock-order model's edges
//! (every lock class it knows); the live pipeline hands the same edges over with [`new_edges`].

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
