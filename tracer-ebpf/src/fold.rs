//! Balanced mmap_lock pairs folded in the kernel (default runs only).
//!
//! Almost every mmap_lock hold is an acquire followed by its release with nothing a rule judges
//! in between (mmap, munmap, mprotect each take and drop the lock once). Sent to userspace such
//! a pair changes no verdict: `mmap-lock-balance` sees a hold come and go, and no other rule
//! looks at it. Streaming them cost the traced mmap loop more than half its throughput, so a
//! default run keeps the acquire here, per task, and drops the pair when the matching release
//! comes next. Anything else the task sends first (a VMA hook, an rwsem of a lock-order class,
//! its exit, another mmap_lock event) sends the kept acquire ahead of it with its own
//! timestamp, so the model sees every hold a judged event happens under.
//!
//! A pair is kept only when the task holds no other mmap_lock userspace knows of (`depth` 0):
//! an acquire nested in another hold is a lock-order edge and may be a balance verdict.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::map,
    maps::{Array, PerCpuArray},
};
use core::cmp::max;

use tracer_common::{counter, flag};

use crate::{emit::count, task::TASK_SLOTS};

/// What the task has pending and how deep userspace thinks it is in mmap_locks.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Slot {
    /// The kept acquire: its mm (0 = none), timestamp, CPU and flags.
    pend_mm: u64,
    pend_ts: u64,
    pend_cpu: u32,
    pend_flags: u32,
    /// mmap_write_downgrade of the kept acquire: its timestamp (0 = none) and CPU.
    down_ts: u64,
    down_cpu: u32,
    _pad2: u32,
    /// Successful acquires sent minus releases sent. Only ever too high (a non-owner release,
    /// a downgrade taken for a nested read): that costs folding, never a verdict.
    depth: u32,
    /// The task whose slot this is (0 = free): see [`FOLD`].
    tid: u32,
    /// The mm of the write hold userspace knows of, so that mmap_write_downgrade's
    /// acquire_returned(read) is not counted as a second hold.
    write_mm: u64,
    /// The mm of the last acquire sent. The first acquire of an mm is always sent: it tells the
    /// model the task held nothing hidden there, so a later unmatched release is a verdict.
    known_mm: u64,
    /// The time of the last event the task sent: a kept acquire sent later is never stamped
    /// before it (its tick-old time could be, when another task refreshed this CPU's tick).
    last_ts: u64,
    /// The mm of the task's outermost hold sent (0 = none): set by an acquire while it is 0,
    /// cleared by that mm's release. Followed in every run, for [`holds_sent`].
    held_mm: u64,
}

const FRESH: Slot = Slot { pend_mm: 0, pend_ts: 0, pend_cpu: 0, pend_flags: 0, down_ts: 0, down_cpu: 0, _pad2: 0, depth: 0, tid: 0, write_mm: 0, known_mm: 0, last_ts: 0, held_mm: 0 };

/// The slot of task `tid` is `tid % TASK_SLOTS`, tagged with the tid, and freed at the task's exit.
/// An array, not a hash map: every mmap_lock acquire and release looks it up, and the verifier
/// inlines an array lookup to an address computation where a hash lookup hashes and walks a
/// bucket (host mmap loop, bpf_stats: the acquire program went from 153 to 100 ns per run, the
/// release from 127 to 87). A slot is never taken from another task: dropping its kept
/// acquire would make its release look unmatched. A task whose slot is taken folds nothing
/// (every event is sent), as when the hash map was full.
#[map]
static FOLD: Array<Slot> = Array::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Per CPU: the jiffy of the last kept time read here, and that time.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Tick {
    jiffies: u64,
    ns: u64,
}

#[map]
static TICK: PerCpuArray<Tick> = PerCpuArray::with_max_entries(1, 0);

/// The time a kept acquire (or its downgrade) is stamped with: the exact clock
/// (`bpf_ktime_get_ns`, like every other event) read at most once per jiffy per CPU, so at
/// most one tick early and never late. Almost every kept acquire is dropped with its release
/// and never sent, and the exact clock (a TSC read) was the largest single cost left on the
/// folded path: three reads per mmap+munmap, about 3% of the host loop. (The coarse clock
/// helper is refused to tracing programs.) A kept acquire that is sent carries
/// `flag::TS_COARSE`; `record` and `--all-events` keep nothing, so their times stay exact.
#[inline(always)]
fn kept_time() -> u64 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_jiffies64() };
    match TICK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs here do not migrate while they run.
        Some(t) => unsafe {
            if (*t).jiffies != now || (*t).ns == 0 {
                (*t).jiffies = now;
                (*t).ns = bpf_ktime_get_ns();
            }
            (*t).ns
        },
        // SAFETY: a helper without arguments.
        None => unsafe { bpf_ktime_get_ns() },
    }
}

/// A kept acquire to send: (mm, flags, timestamp, CPU), and its downgrade if one was kept.
pub struct Kept {
    pub mm: u64,
    pub flags: u16,
    pub ts_ns: u64,
    pub cpu: u32,
    pub downgrade: Option<(u64, u32)>,
}

/// The current task's slot: one map lookup per event, shared by every step below.
pub struct SlotRef(*mut Slot);

/// The slot of the current task `tid` (the caller has read it already: one helper call less
/// on every hit); created when `create` (a successful acquire) and missing.
#[inline(always)]
pub fn slot(tid: u32, create: bool) -> Option<SlotRef> {
    let p = FOLD.get_ptr_mut(tid % TASK_SLOTS)?;
    // SAFETY: a valid map value; only its own task writes it (and takes it when it is free).
    unsafe {
        if (*p).tid == tid && tid != 0 {
            return Some(SlotRef(p));
        }
        if !create || (*p).tid != 0 || tid == 0 {
            return None;
        }
        *p = Slot { tid, ..FRESH };
    }
    Some(SlotRef(p))
}

// SAFETY (every method): a valid map value, touched only by its own task (and its exit).
impl SlotRef {
    /// A release: true if it ends the kept acquire (the pair is dropped).
    #[inline(always)]
    pub fn fold_release(&self, mm: u64, flags: u16) -> bool {
        let s = self.0;
        unsafe {
            let pend = (*s).pend_mm;
            // After a downgrade the hold is a read hold.
            let held_write = (*s).pend_flags as u16 & flag::WRITE != 0 && (*s).down_ts == 0;
            if pend == 0 || pend != mm || held_write != (flags & flag::WRITE != 0) {
                return false;
            }
            (*s).pend_mm = 0;
        }
        count(counter::FOLDED_PAIRS);
        true
    }

    /// A successful plain read acquire of the mm whose write acquire is kept: only
    /// mmap_write_downgrade can do that (a read attempt on one's own write lock blocks forever,
    /// a trylock of it fails), and munmap does it on every call. True if it was kept too.
    #[inline(always)]
    pub fn keep_downgrade(&self, mm: u64) -> bool {
        let s = self.0;
        unsafe {
            if (*s).pend_mm != mm || (*s).pend_flags as u16 & flag::WRITE == 0 || (*s).down_ts != 0 {
                return false;
            }
            (*s).down_ts = kept_time();
            (*s).down_cpu = bpf_get_smp_processor_id();
        }
        true
    }

    /// Takes the kept acquire, if any, to be sent ahead of another event.
    #[inline(always)]
    pub fn take_kept(&self) -> Option<Kept> {
        let s = self.0;
        unsafe {
            let mm = (*s).pend_mm;
            if mm == 0 {
                return None;
            }
            (*s).pend_mm = 0;
            let ts_ns = max((*s).pend_ts, (*s).last_ts);
            let down = (*s).down_ts;
            let downgrade = if down != 0 { Some((max(down, ts_ns), (*s).down_cpu)) } else { None };
            Some(Kept { mm, flags: (*s).pend_flags as u16, ts_ns, cpu: (*s).pend_cpu, downgrade })
        }
    }

    /// The task sends an event stamped `ts_ns`.
    #[inline(always)]
    pub fn sent_at(&self, ts_ns: u64) {
        unsafe { (*self.0).last_ts = ts_ns };
    }

    /// A successful plain acquire: true if it was kept (not sent now). Only when userspace
    /// knows the task holds no mmap_lock and has seen it take this mm before.
    #[inline(always)]
    pub fn keep_acquire(&self, mm: u64, flags: u16) -> bool {
        let s = self.0;
        unsafe {
            if (*s).depth != 0 || (*s).pend_mm != 0 || (*s).known_mm != mm {
                return false;
            }
            (*s).pend_mm = mm;
            (*s).pend_ts = kept_time();
            (*s).pend_cpu = bpf_get_smp_processor_id();
            (*s).pend_flags = u32::from(flags);
            (*s).down_ts = 0;
        }
        true
    }

    /// Keeps `depth` in step with what userspace was sent: an acquire or a release. (Called in
    /// every run: `record` and `--all-events` follow `held_mm` only.)
    #[inline(always)]
    pub fn sent(&self, acquire: bool, mm: u64, flags: u16) {
        if acquire && flags & flag::SUCCESS == 0 {
            return;
        }
        let s = self.0;
        let write = flags & flag::WRITE != 0;
        unsafe {
            if acquire && (*s).held_mm == 0 {
                (*s).held_mm = mm;
            } else if !acquire && (*s).held_mm == mm {
                (*s).held_mm = 0;
            }
            if acquire {
                (*s).known_mm = mm;
                if write {
                    (*s).write_mm = mm;
                } else if (*s).write_mm == mm && mm != 0 {
                    // mmap_write_downgrade: the write hold goes on as a read hold.
                    (*s).write_mm = 0;
                    return;
                }
                (*s).depth = (*s).depth.saturating_add(1);
            } else {
                if write && (*s).write_mm == mm {
                    (*s).write_mm = 0;
                }
                (*s).depth = (*s).depth.saturating_sub(1);
            }
        }
    }
}

/// The current task holds `mm`'s mmap_lock through the acquire kept in its slot (read or
/// write, a downgrade included): a hold userspace has not been sent, so only this says a page
/// walk inside it is legal.
#[inline(always)]
pub fn holds_kept(mm: u64) -> bool {
    // SAFETY: a valid map value, touched only by its own task.
    mm != 0 && slot(tid(), false).is_some_and(|s| unsafe { (*s.0).pend_mm } == mm)
}

/// The current task holds `mm`'s mmap_lock through a hold sent to userspace, as far as its
/// slot knows: what says a `PGWALK_RDLOCK` walk inside a read hold already sent is legal, so
/// that it goes without its stack (vma.rs). Not enough to keep the walk back: a release by
/// another task (mmap_read_unlock_non_owner) leaves `held_mm` set, and that must cost at most
/// a stack, never a verdict.
#[inline(always)]
pub fn holds_sent(mm: u64) -> bool {
    // SAFETY: a valid map value, touched only by its own task.
    mm != 0 && slot(tid(), false).is_some_and(|s| unsafe { (*s.0).held_mm } == mm)
}

/// The mmap_lock holds of task `tid` (the current one), as far as its slot knows, for
/// lock-order's chain key (locks.rs `ChainKey`): how many userspace was sent, whether one of
/// them is a write hold, and the kept acquire and its mode. Some(0) with no slot (the task has
/// not acquired one since its slot was freed); None when another task has its slot, so its
/// holds are not followed.
#[inline(always)]
pub fn held_summary(tid: u32) -> Option<u32> {
    let p = FOLD.get_ptr_mut(tid % TASK_SLOTS)?;
    // SAFETY: a valid map value; only its own task writes it.
    unsafe {
        if (*p).tid == 0 {
            return Some(0);
        }
        if (*p).tid != tid {
            return None;
        }
        let kept = match (*p).pend_mm {
            0 => 0,
            _ if (*p).pend_flags as u16 & flag::WRITE != 0 && (*p).down_ts == 0 => 2,
            _ => 1,
        };
        Some((*p).depth.min(255) | u32::from((*p).write_mm != 0) << 8 | kept << 9)
    }
}

/// The task is gone: its slot with it (after its kept acquire was sent).
#[inline(always)]
pub fn forget() {
    let t = tid();
    if let Some(p) = FOLD.get_ptr_mut(t % TASK_SLOTS) {
        // SAFETY: a valid map value, freed only by the task it is tagged with.
        unsafe {
            if (*p).tid == t {
                *p = FRESH;
            }
        }
    }
}
