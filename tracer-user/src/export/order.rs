//! Lock-order edges for exports: "a task took lock B while holding lock A", drawn as flow
//! arrows between the two acquisitions.
//!
//! Exports take edges through [`OrderEdges`] so the model's own lock-order graph can be plugged
//! in when it exists; until then [`NestedHolds`] derives the mmap_lock edges from the trace.

use std::collections::{HashMap, HashSet};

use crate::event::{Event, What};

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
#[derive(Default)]
pub struct NestedHolds {
    /// Per tid: (mm, when taken), oldest first.
    held: HashMap<u32, Vec<(u64, u64)>>,
    seen: HashSet<(u64, u64)>,
}

impl OrderEdges for NestedHolds {
    fn observe(&mut self, ev: &Event, out: &mut Vec<OrderEdge>) {
        let site = |ts_ns| Site { pid: ev.tgid, tid: ev.tid, ts_ns };
        match &ev.what {
            What::MmapLockAcquired { mm, success: true, .. } => {
                let held = self.held.entry(ev.tid).or_default();
                for &(other, since) in held.iter() {
                    if other != *mm && self.seen.insert((other, *mm)) {
                        out.push(OrderEdge {
                            from: site(since),
                            to: site(ev.ts_ns),
                            label: format!("mmap_lock {other:#x} -> mmap_lock {mm:#x}"),
                        });
                    }
                }
                held.push((*mm, ev.ts_ns));
            }
            What::MmapLockReleased { mm, .. } => {
                if let Some(h) = self.held.get_mut(&ev.tid)
                    && let Some(i) = h.iter().rposition(|(m, _)| m == mm)
                {
                    h.remove(i);
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
