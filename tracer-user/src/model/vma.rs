//! The VMA rules: per-VMA write and read locks, page walks, VMA changes and VMA snapshots.
//!
//! The eBPF side reads lock state from kernel memory at each hook (`Facts`): whether the mmap
//! rwsem is held and by whom, whether the VMA is write-locked (`vm_lock_seq == mm_lock_seq`).
//! Those facts decide where they are known; where they are not (a layout this kernel lacks),
//! the mmap_lock stream decides, and only when it is certain (`Holding::Unknown` never judges).

use super::fasthash::FastMap;

use super::mmap_lock::{Holding, MmapLocks, Mode};
use super::rules::{
    NEW_VMA_LOCKED, NO_MMAP_UNDER_VMA_READ, PAGEWALK_LOCK_MODE, PAGEWALK_VMA_WRITE, VM_FLAGS_LOCKED,
    VMA_PREPARE_PRELOCKED, VMA_WRITE_NEEDS_MMAP_WRITE,
};
use super::verdict::Verdict;
use crate::event::{Event, Facts, NameSet, WalkLock, What, site_name};
use tracer_common::{fact, site};

/// vm_flags bits the kernel legally changes without the VMA write lock, with the source that
/// allows it. Filled from the kernel sources (see rules.rs vm-flags-locked).
pub const UNLOCKED_FLAG_BITS: u64 = 0;

#[derive(Debug, Default)]
pub(crate) struct VmaRules {
    /// mmap_lock attempts started under a per-VMA read lock, by task: judged when the attempt
    /// returns, because only then is it known whether it was a trylock (mmap_read_trylock
    /// traces start_locking too, and the kernel itself trylocks under the VMA lock:
    /// mm/memory.c __vmf_anon_prepare).
    pending: FastMap<u32, Event>,
}

/// Does the current task hold `mm`'s mmap_lock in a mode that satisfies `need`?
/// `None`: cannot tell.
fn holds(facts: Facts, stream: Holding, need: Mode) -> Option<bool> {
    if facts.mmap_known() {
        if facts.has(fact::MMAP_WRITER_IS_CURRENT) {
            return Some(true);
        }
        if need == Mode::Write {
            return Some(false);
        }
        // A read hold is not attributable from the rwsem: only "nobody holds it" is certain.
        if !facts.has(fact::MMAP_LOCKED) {
            return Some(false);
        }
    }
    match stream {
        Holding::Held(m) => Some(need == Mode::Read || m == Mode::Write),
        Holding::Nothing => Some(false),
        Holding::Unknown => None,
    }
}

fn describe(facts: Facts) -> &'static str {
    if !facts.mmap_known() {
        "(mmap_lock state from the event stream)"
    } else if facts.has(fact::MMAP_WRITER_IS_CURRENT) {
        "(mmap_lock held for write by this task)"
    } else if facts.has(fact::MMAP_WRITE_LOCKED) {
        "(mmap_lock held for write by another task)"
    } else if facts.has(fact::MMAP_LOCKED) {
        "(mmap_lock held for read, not for write by this task)"
    } else {
        "(mmap_lock not held by anyone)"
    }
}

impl VmaRules {
    pub(crate) fn forget(&mut self) {
        self.pending.clear();
    }

    pub(crate) fn apply(&mut self, ev: &Event, mmap: &MmapLocks, out: &mut Vec<Verdict>) {
        let proof = |mm: u64| -> Vec<Event> { mmap.hold_proof(ev.tid, mm).into_iter().chain([ev.clone()]).collect() };
        match &ev.what {
            What::VmaWriteLock { mm, vma, facts } if holds(*facts, mmap.holding(ev, *mm), Mode::Write) == Some(false) => {
                let what = format!("vma_start_write on VMA {vma:#x} without mmap_lock held for write {}", describe(*facts));
                out.push(Verdict::new(VMA_WRITE_NEEDS_MMAP_WRITE, what, ev, *mm, proof(*mm)));
            }
            What::PageWalk { mm, vma, walk_lock: Some(w), site: s, facts } => {
                if *s == site::WALK_PAGE_MAPPING {
                    return; // walks a file's mappings under i_mmap_rwsem: no mmap_lock to check
                }
                if *mm == 0 {
                    // A VMA without an mm (the gate VMA /proc/PID/smaps shows): mm/pagewalk.c
                    // walk_page_vma returns -EINVAL before any lock check or walk.
                    return;
                }
                let fname = site_name(*s);
                match w {
                    WalkLock::PgwalkVmaRdlockVerify => {
                        // process_vma_walk_lock: vma_assert_locked(), read or write.
                        if *vma != 0 && facts.vma_known() && facts.has(fact::VMA_READ_KNOWN) && !facts.has(fact::VMA_WRITE_LOCKED) && !facts.has(fact::VMA_READ_LOCKED) {
                            let what = format!("{fname} with {} on VMA {vma:#x}, which is neither read- nor write-locked", w.name());
                            out.push(Verdict::new(PAGEWALK_LOCK_MODE, what, ev, *mm, vec![ev.clone()]));
                        }
                    }
                    _ => {
                        let need = if *w == WalkLock::PgwalkRdlock { Mode::Read } else { Mode::Write };
                        if holds(*facts, mmap.holding(ev, *mm), need) == Some(false) {
                            let what = format!("{fname} with {} without mmap_lock held for {} {}", w.name(), need.name(), describe(*facts));
                            out.push(Verdict::new(PAGEWALK_LOCK_MODE, what, ev, *mm, proof(*mm)));
                        } else if *w == WalkLock::PgwalkWrlockVerify && *vma != 0 && facts.vma_known() && !facts.has(fact::VMA_WRITE_LOCKED) {
                            let what = format!("{fname} with PGWALK_WRLOCK_VERIFY on VMA {vma:#x}, which is not write-locked");
                            out.push(Verdict::new(PAGEWALK_VMA_WRITE, what, ev, *mm, vec![ev.clone()]));
                        }
                    }
                }
            }
            What::PageWalkVma { mm, vma, walk_lock: Some(w @ (WalkLock::PgwalkWrlock | WalkLock::PgwalkWrlockVerify)), facts }
                if facts.vma_known() && !facts.has(fact::VMA_WRITE_LOCKED) =>
            {
                let what = format!("page walk with {} visits VMA {vma:#x} without it being write-locked", w.name());
                out.push(Verdict::new(PAGEWALK_VMA_WRITE, what, ev, *mm, vec![ev.clone()]));
            }
            What::VmaPrepare { mm, unlocked, first_unlocked, .. } if !unlocked.is_empty() => {
                let what = format!("vma_prepare handed VMA {first_unlocked:#x} ({}) that is not write-locked", unlocked.join(", "));
                out.push(Verdict::new(VMA_PREPARE_PRELOCKED, what, ev, *mm, vec![ev.clone()]));
            }
            What::VmaNew { mm, vma, site: s, facts } if facts.vma_known() && !facts.has(fact::VMA_WRITE_LOCKED) => {
                let what = if *s == site::KSM_ADD_VMA {
                    // ksm_add_vma does not insert: its callers (mmap_region, do_brk_flags) did.
                    format!("VMA {vma:#x} reached ksm_add_vma just stored in the tree and not write-locked")
                } else {
                    format!("{} inserted VMA {vma:#x} without write-locking it", site_name(*s))
                };
                out.push(Verdict::new(NEW_VMA_LOCKED, what, ev, *mm, vec![ev.clone()]));
            }
            What::VmaModified { mm, vma, site: s, changes, flags_before, flags_after, facts }
                if facts.vma_known() && !facts.has(fact::VMA_WRITE_LOCKED) =>
            {
                // A VMA write-locked for the change stays write-locked until mmap_write_unlock,
                // which comes after the modifier returns.
                let what = format!(
                    "{} changed {} of VMA {vma:#x} (vm_flags {flags_before:#x} -> {flags_after:#x}) without write-locking it",
                    site_name(*s),
                    changes.join(", ")
                );
                out.push(Verdict::new(VM_FLAGS_LOCKED, what, ev, *mm, proof(*mm)));
            }
            What::VmaSnapshot { mm, vma, vm_start, changes, flags_changed, facts } => {
                self.snapshot(ev, *mm, *vma, *vm_start, changes, *flags_changed, *facts, out);
            }
            What::MmapLockStart { vma_read: Some(_), .. } => {
                self.pending.insert(ev.tid, ev.clone());
            }
            What::MmapLockAcquired { mm, write, success, vma_read, trylock } => {
                let start = self.pending.remove(&ev.tid);
                if let (Some(v), false) = (vma_read, *trylock) {
                    let mode = if *write { "write" } else { "read" };
                    let outcome = if *success { "" } else { " (the wait was interrupted)" };
                    let what = format!("mmap_lock taken for {mode}, blocking, while holding the per-VMA read lock on VMA {v:#x}{outcome}");
                    let events = start.into_iter().chain([ev.clone()]).collect();
                    out.push(Verdict::new(NO_MMAP_UNDER_VMA_READ, what, ev, *mm, events));
                }
            }
            What::TaskExit => {
                self.pending.remove(&ev.tid);
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn snapshot(&mut self, ev: &Event, mm: u64, vma: u64, vm_start: u64, changes: &NameSet, flags_changed: u64, facts: Facts, out: &mut Vec<Verdict>) {
        let has = |c: &str| changes.has(c);
        // The iterator holds the mm's mmap_lock for read while it runs, so no mmap write section
        // is open: a VMA that still looks write-locked was locked outside one.
        if facts.vma_known() && facts.has(fact::VMA_WRITE_LOCKED) {
            let what = format!("VMA {vma:#x} at {vm_start:#x} is write-locked while nobody holds mmap_lock for write (seen by snapshot)");
            out.push(Verdict::new(VMA_WRITE_NEEDS_MMAP_WRITE, what, ev, mm, vec![ev.clone()]));
        }
        if !has("vm_lock_seq") && !has("new") {
            let mut fields: Vec<&str> = ["vm_page_prot", "vm_userfaultfd_ctx", "vm_policy"].into_iter().filter(|f| has(f)).collect();
            if flags_changed & !UNLOCKED_FLAG_BITS != 0 {
                fields.insert(0, "vm_flags");
            }
            if !fields.is_empty() && facts.has(fact::VMA_KNOWN) {
                let what = format!(
                    "VMA {vma:#x} at {vm_start:#x}: {} changed while vm_lock_seq did not move (never write-locked; seen by snapshot, vm_flags bits {flags_changed:#x})",
                    fields.join(", ")
                );
                out.push(Verdict::new(VM_FLAGS_LOCKED, what, ev, mm, vec![ev.clone()]));
            }
        }
        if has("new") && has("mm_seen_before") && facts.has(fact::VMA_SEQ_UNSET) {
            let what = format!("VMA {vma:#x} at {vm_start:#x} is in the mm but was never write-locked (vm_lock_seq still UINT_MAX; seen by snapshot)");
            out.push(Verdict::new(NEW_VMA_LOCKED, what, ev, mm, vec![ev.clone()]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use tracer_common::fact as f;

    const MM: u64 = 0xffff_8880_0000_a000;
    const VMA: u64 = 0xffff_8880_0bad_0000;
    const KNOWN: u32 = f::MMAP_KNOWN | f::VMA_KNOWN;
    const WRITER: u32 = KNOWN | f::MMAP_LOCKED | f::MMAP_WRITE_LOCKED | f::MMAP_WRITER_IS_CURRENT;
    const READER: u32 = KNOWN | f::MMAP_LOCKED;

    fn ev(tid: u32, task_new: bool, what: What) -> Event {
        Event { ts_ns: 1, cpu: 0, tid, tgid: tid, comm: "t".into(), task_new, ts_coarse: false, lost_before: 0, loss_epoch: 0, stack: Some(7), what }
    }

    fn verdicts(events: &[Event]) -> Vec<Verdict> {
        let mut m = Model::new();
        let mut out = Vec::new();
        m.apply(&ev(0, false, What::Stack { id: 7, frames: vec!["vt_mode+0x1c [vmalock_test]".into()] }), &mut out);
        for e in events {
            m.apply(e, &mut out);
        }
        out
    }

    fn rules_of(v: &[Verdict]) -> Vec<&'static str> {
        v.iter().map(|v| v.rule).collect()
    }

    fn write_lock(facts: u32) -> What {
        What::VmaWriteLock { mm: MM, vma: VMA, facts: Facts(facts) }
    }

    #[test]
    fn vma_write_lock_needs_this_task_to_hold_mmap_for_write() {
        let v = verdicts(&[ev(1, false, write_lock(READER))]);
        assert_eq!(rules_of(&v), [VMA_WRITE_NEEDS_MMAP_WRITE]);
        assert!(v[0].what.contains("held for read"), "{}", v[0].what);
        assert_eq!(v[0].stack, ["vt_mode+0x1c [vmalock_test]"], "the offending site's stack");
        // Another task's write hold does not count.
        let other = KNOWN | f::MMAP_LOCKED | f::MMAP_WRITE_LOCKED;
        assert_eq!(rules_of(&verdicts(&[ev(1, false, write_lock(other))])), [VMA_WRITE_NEEDS_MMAP_WRITE]);
        assert!(verdicts(&[ev(1, false, write_lock(WRITER))]).is_empty());
    }

    #[test]
    fn without_rwsem_facts_the_stream_decides_only_when_certain() {
        let acq = |w| What::MmapLockAcquired { mm: MM, write: w, success: true, vma_read: None, trylock: false };
        // Traced from birth, took it for read only: certain.
        let v = verdicts(&[ev(1, true, acq(false)), ev(1, true, write_lock(f::VMA_KNOWN))]);
        assert_eq!(rules_of(&v), [VMA_WRITE_NEEDS_MMAP_WRITE]);
        assert_eq!(v[0].events.len(), 2, "the read acquire proves it");
        assert!(verdicts(&[ev(1, true, acq(true)), ev(1, true, write_lock(f::VMA_KNOWN))]).is_empty());
        // A task from before tracing may hold it unseen: no verdict.
        assert!(verdicts(&[ev(1, false, write_lock(f::VMA_KNOWN))]).is_empty());
    }

    fn walk(w: WalkLock, s: u64, vma: u64, facts: u32) -> What {
        What::PageWalk { mm: MM, vma, walk_lock: Some(w), site: s, facts: Facts(facts) }
    }

    #[test]
    fn walks_must_hold_what_walk_lock_declares() {
        let rd = WalkLock::PgwalkRdlock;
        let nobody = KNOWN;
        assert_eq!(rules_of(&verdicts(&[ev(1, false, walk(rd, site::WALK_PAGE_RANGE, 0, nobody))])), [PAGEWALK_LOCK_MODE]);
        // Somebody holds it for read, and the task is not known to hold nothing: no verdict.
        assert!(verdicts(&[ev(1, false, walk(rd, site::WALK_PAGE_RANGE, 0, READER))]).is_empty());
        // Traced from birth and holding nothing while another task reads: a verdict.
        assert_eq!(rules_of(&verdicts(&[ev(1, true, walk(rd, site::WALK_PAGE_VMA, VMA, READER))])), [PAGEWALK_LOCK_MODE]);
        let wr = WalkLock::PgwalkWrlock;
        assert_eq!(rules_of(&verdicts(&[ev(1, false, walk(wr, site::WALK_PAGE_RANGE, 0, READER))])), [PAGEWALK_LOCK_MODE]);
        assert!(verdicts(&[ev(1, false, walk(wr, site::WALK_PAGE_RANGE, 0, WRITER))]).is_empty());
        // The gate VMA has no mm: walk_page_vma refuses it before checking locks.
        assert!(verdicts(&[ev(1, true, What::PageWalk { mm: 0, vma: VMA, walk_lock: Some(rd), site: site::WALK_PAGE_VMA, facts: Facts(0) })]).is_empty());
        // walk_page_mapping runs under i_mmap_rwsem: not judged against mmap_lock.
        assert!(verdicts(&[ev(1, false, walk(rd, site::WALK_PAGE_MAPPING, 0, nobody))]).is_empty());
        // VMA_RDLOCK_VERIFY wants the VMA locked, not the mmap_lock.
        let vr = WalkLock::PgwalkVmaRdlockVerify;
        let rk = KNOWN | f::VMA_READ_KNOWN;
        assert_eq!(rules_of(&verdicts(&[ev(1, false, walk(vr, site::WALK_PAGE_VMA, VMA, rk))])), [PAGEWALK_LOCK_MODE]);
        assert!(verdicts(&[ev(1, false, walk(vr, site::WALK_PAGE_VMA, VMA, rk | f::VMA_READ_LOCKED))]).is_empty());
    }

    #[test]
    fn write_locked_walks_must_write_lock_each_vma() {
        let step = |w, facts| What::PageWalkVma { mm: MM, vma: VMA, walk_lock: Some(w), facts: Facts(facts) };
        assert_eq!(rules_of(&verdicts(&[ev(1, false, step(WalkLock::PgwalkWrlock, WRITER))])), [PAGEWALK_VMA_WRITE]);
        assert!(verdicts(&[ev(1, false, step(WalkLock::PgwalkWrlock, WRITER | f::VMA_WRITE_LOCKED))]).is_empty());
        assert!(verdicts(&[ev(1, false, step(WalkLock::PgwalkRdlock, READER))]).is_empty());
        // WRLOCK_VERIFY at walk_page_vma entry: already write-locked or a verdict.
        let v = verdicts(&[ev(1, false, walk(WalkLock::PgwalkWrlockVerify, site::WALK_PAGE_VMA, VMA, WRITER))]);
        assert_eq!(rules_of(&v), [PAGEWALK_VMA_WRITE]);
    }

    #[test]
    fn vma_prepare_and_new_vmas() {
        let prep = |unlocked: &[&str]| What::VmaPrepare {
            mm: MM,
            vma: VMA,
            unlocked: NameSet::from_names(unlocked.iter().copied(), crate::event::PREPARE_ROLES).unwrap(),
            first_unlocked: VMA,
            facts: Facts(WRITER),
        };
        assert_eq!(rules_of(&verdicts(&[ev(1, false, prep(&["adj_next"]))])), [VMA_PREPARE_PRELOCKED]);
        assert!(verdicts(&[ev(1, false, prep(&[]))]).is_empty());
        let new = |facts| What::VmaNew { mm: MM, vma: VMA, site: site::VMA_LINK, facts: Facts(facts) };
        assert_eq!(rules_of(&verdicts(&[ev(1, false, new(WRITER))])), [NEW_VMA_LOCKED]);
        assert!(verdicts(&[ev(1, false, new(WRITER | f::VMA_WRITE_LOCKED))]).is_empty());
        // At ksm_add_vma the VMA was stored by its caller: the verdict says so, not "inserted by".
        let at_ksm = What::VmaNew { mm: MM, vma: VMA, site: site::KSM_ADD_VMA, facts: Facts(WRITER) };
        let v = verdicts(&[ev(1, false, at_ksm)]);
        assert_eq!(rules_of(&v), [NEW_VMA_LOCKED]);
        assert!(v[0].what.contains("reached ksm_add_vma"), "{}", v[0].what);
    }

    fn snap(changes: &[&str], flags_changed: u64, facts: u32) -> What {
        What::VmaSnapshot { mm: MM, vma: VMA, vm_start: 0x1000, changes: NameSet::from_names(changes.iter().copied(), crate::event::SNAP_CHANGES).unwrap(), flags_changed, facts: Facts(facts) }
    }

    #[test]
    fn snapshots_catch_unlocked_changes_stale_write_locks_and_unlocked_inserts() {
        let seen = KNOWN | f::MMAP_LOCKED;
        assert_eq!(rules_of(&verdicts(&[ev(1, false, snap(&["vm_flags"], 0x800_0000, seen))])), [VM_FLAGS_LOCKED]);
        // The VMA was write-locked in between: legal.
        assert!(verdicts(&[ev(1, false, snap(&["vm_flags", "vm_lock_seq"], 0x800_0000, seen))]).is_empty());
        assert_eq!(rules_of(&verdicts(&[ev(1, false, snap(&["vm_policy"], 0, seen))])), [VM_FLAGS_LOCKED]);
        assert_eq!(rules_of(&verdicts(&[ev(1, false, snap(&[], 0, seen | f::VMA_WRITE_LOCKED))])), [VMA_WRITE_NEEDS_MMAP_WRITE]);
        let unset = seen | f::VMA_SEQ_UNSET;
        assert_eq!(rules_of(&verdicts(&[ev(1, false, snap(&["new", "mm_seen_before"], 0, unset))])), [NEW_VMA_LOCKED]);
        // First sight of an mm (fork, exec, start of tracing): its VMAs are not judged new.
        assert!(verdicts(&[ev(1, false, snap(&["new"], 0, unset))]).is_empty());
    }

    #[test]
    fn modifiers_must_write_lock_what_they_change() {
        let m = |facts| What::VmaModified {
            mm: MM,
            vma: VMA,
            site: site::MPROTECT_FIXUP,
            changes: NameSet::from_names(["vm_flags"], crate::event::SNAP_CHANGES).unwrap(),
            flags_before: 0x73,
            flags_after: 0x71,
            facts: Facts(facts),
        };
        let v = verdicts(&[ev(1, false, m(WRITER))]);
        assert_eq!(rules_of(&v), [VM_FLAGS_LOCKED]);
        assert!(v[0].what.starts_with("mprotect_fixup changed vm_flags"), "{}", v[0].what);
        assert_eq!(v[0].stack, ["vt_mode+0x1c [vmalock_test]"]);
        assert!(verdicts(&[ev(1, false, m(WRITER | f::VMA_WRITE_LOCKED))]).is_empty());
    }

    #[test]
    fn blocking_mmap_lock_under_a_vma_read_lock() {
        let start = What::MmapLockStart { mm: MM, write: false, vma_read: Some(VMA) };
        let acq = |vr, trylock| What::MmapLockAcquired { mm: MM, write: false, success: true, vma_read: vr, trylock };
        // Blocking: reported once, when it returns, with the start as proof.
        let v = verdicts(&[ev(1, false, start.clone()), ev(1, false, acq(Some(VMA), false))]);
        assert_eq!(rules_of(&v), [NO_MMAP_UNDER_VMA_READ]);
        assert!(v[0].what.contains("taken for read, blocking"), "{}", v[0].what);
        assert_eq!(v[0].events.len(), 2);
        // A trylock cannot deadlock: the kernel does it itself (__vmf_anon_prepare).
        assert!(verdicts(&[ev(1, false, start), ev(1, false, acq(Some(VMA), true))]).is_empty());
        assert!(verdicts(&[ev(1, false, acq(None, false))]).is_empty());
    }
}
