//! VMA-lock, page-walk and VMA-change probes. Each hook has an fentry/fexit program and a
//! kprobe/kretprobe twin: the loader attaches fentry where the kernel allows trampolines and the
//! kprobe otherwise. The section names are defaults; the loader picks targets by name from BTF.
//!
//! Every program reads the lock state the rules need at the hook (crate::kernel) and sends it as
//! facts; the model judges. Per-VMA read locks are on the page-fault path, so they are kept in a
//! per-task map and counted here, and only surface in the event of an mmap_lock taken under one.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, LruHashMap},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, tracing::StackIdContext},
};
use aya_log_ebpf::debug;
use tracer_common::{counter, fact, kind, layout, prepare_role, site, walk_lock};

use crate::{
    task::TASK_SLOTS,
    emit::{Body, count, emit_body, keep_legal, stack_id, traced, traced_tid, witness_stack_id},
    kernel::{layout, mm_lock_seq, mmap_facts, read, read_known_two, read_two, vma_facts, vma_mm, vma_readers, vma_write_locked},
    locks::{LearnKey, learn, learn_from, learn_key, on_trylock_entry},
};

/// The per-VMA read lock a task holds (lock_vma_under_rcu returned it, vma_end_read has not
/// run), with what tells whether it can still be believed. `vma == 0`: none.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Hold {
    /// The task whose slot this is now (see [`TASK_VMA_READ`]).
    tid: u32,
    /// `Config::hold_epoch` when it was taken.
    epoch: u32,
    vma: u64,
    /// The VMA's hold generation ([`VmaHolds::generation`]) when it was taken.
    generation: u64,
    /// The entry into the kernel it was taken in.
    entry: EntryId,
    /// What lock classes were last learned from through this slot (kept after the release), and
    /// how many times since that was found unchanged and not learned again: see [`learn_in`].
    learned: LearnKey,
    learned_reused: u32,
    _pad: u32,
}

/// How many times in a row a slot's unchanged [`Hold::learned`] stands in for learning again.
/// LOCK_CLASS is an LRU: an address aged out of it is learned back within this many hooks.
const LEARN_REUSE: u32 = 64;

/// Learns the lock classes reachable from `vma` (locks::learn_from) unless the last learning
/// through `slot` was from the same ones. vma_start_write, vma_prepare, the modifiers and the
/// fault path see one mapping's file and anon_vma over and over, and each learning costs reads
/// and LRU lookups. Whose slot it is does not matter: LOCK_CLASS is shared, and `learned` is
/// not part of a hold.
#[inline(always)]
fn learn_in(slot: *mut Hold, vma: u64) {
    let key = learn_key(vma);
    // SAFETY: a valid map value. Two tasks sharing the slot can tear `learned`: a learning
    // skipped once (an edge not seen), never a false one.
    unsafe {
        if (*slot).learned_reused < LEARN_REUSE && (*slot).learned.same_classes(&key) {
            (*slot).learned_reused += 1;
            return;
        }
        learn_from(&key);
        (*slot).learned = key;
        (*slot).learned_reused = 0;
    }
}

/// [`learn_in`] the slot of task `t`: the current task, its tid read with the filter
/// (emit::traced_tid), where each hook had read it again here.
#[inline(always)]
fn learn_for(t: u32, vma: u64) {
    match task_slot(t) {
        Some(slot) => learn_in(slot, vma),
        None => learn(vma),
    }
}

/// The daemon's current hold epoch (see `Config::hold_epoch`).
#[inline(always)]
fn hold_epoch() -> u32 {
    crate::emit::CONFIG.get(0).map_or(0, |c| c.hold_epoch)
}

const VMA_SLOT_BITS: u32 = 14;

/// The per-VMA read lock each task holds, in slot `tid % TASK_SLOTS`, tagged with the tid:
/// one lookup on every fault's start and end and at every mmap_lock attempt. An array, not a
/// hash map: the verifier inlines an array lookup to an address computation, while a hash
/// lookup (and an LRU map's insert and delete) cost more under TCG than the rest of the fault
/// path's programs together. Two tasks in one slot: the later hold replaces the earlier, which
/// is then no longer believed (a verdict missed, never a false one).
#[map]
static TASK_VMA_READ: Array<Hold> = Array::with_max_entries(TASK_SLOTS, 0);

/// The current task's slot (whoever holds it now).
#[inline(always)]
fn task_slot(t: u32) -> Option<*mut Hold> {
    TASK_VMA_READ.get_ptr_mut(t % TASK_SLOTS)
}

/// What is believed about the holds on one VMA. vma_end_read() is inline almost everywhere,
/// so a release can go unseen; comparing `believed` with the VMA's real reader count tells
/// whether every hold believed on it can still be real.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct VmaHolds {
    /// The VMA whose slot this is now (see [`VMA_HOLDS`]).
    vma: u64,
    /// How many holds in TASK_VMA_READ name this VMA.
    believed: u64,
    /// Changed when more holds are believed on the VMA than it has readers, which proves some
    /// believed holds stale (released unseen: an inline vma_end_read, or a handle_mm_fault
    /// return the kernel skipped our program for), and when the VMA takes its slot. Holds of
    /// another generation are no longer trusted, nor counted, so one stale hold cannot blind
    /// the VMA for good.
    generation: u64,
}

/// The holds believed on each VMA, in a slot picked by hashing its address and tagged with it
/// (an array for the same reason as TASK_VMA_READ). A VMA taking a slot over starts a fresh
/// generation, so no hold counted under the slot's earlier owner is believed.
#[map]
static VMA_HOLDS: Array<VmaHolds> = Array::with_max_entries(1 << VMA_SLOT_BITS, 0);

#[inline(always)]
fn vma_slot(vma: u64) -> Option<*mut VmaHolds> {
    // Fibonacci hashing: slab addresses share their low bits.
    let i = ((vma >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - VMA_SLOT_BITS)) as u32;
    VMA_HOLDS.get_ptr_mut(i)
}

/// `vma`'s slot, taken over (with a fresh generation) if another VMA had it.
#[inline(always)]
fn vma_holds_entry(vma: u64) -> Option<*mut VmaHolds> {
    let v = vma_slot(vma)?;
    // SAFETY: a valid map value (see `release` on the unlocked update).
    unsafe {
        if (*v).vma != vma {
            // Nanoseconds: no generation a hold on this VMA was counted under before.
            *v = VmaHolds { vma, believed: 0, generation: bpf_ktime_get_ns() };
        }
    }
    Some(v)
}

/// `vma`'s counts, if its slot still names it.
#[inline(always)]
fn vma_holds(vma: u64) -> Option<VmaHolds> {
    vma_slot(vma).map(|v| unsafe { *v }).filter(|v| v.vma == vma)
}

/// Ends the hold in slot `h` (a TASK_VMA_READ value), if any, whoever's it is: a hold of
/// another generation was already left out of the count.
#[inline(always)]
fn release(h: *mut Hold) {
    // SAFETY: `h` is a TASK_VMA_READ value.
    let held = unsafe { *h };
    if held.vma == 0 {
        return;
    }
    if let Some(v) = vma_slot(held.vma) {
        // SAFETY: a valid map value. A plain read-modify-write: the BPF atomic-add intrinsic
        // miscounted here (one +1 read back as 3 in a 6.12 guest). Two CPUs updating the same
        // VMA's count at the same instant can lose an update; the count is then off until the
        // next reset, which can only make a hold untrusted (no verdict) or, rarely, trusted.
        unsafe {
            if (*v).vma == held.vma && (*v).generation == held.generation {
                (*v).believed = (*v).believed.saturating_sub(1);
            }
        }
    }
    unsafe { (*h).vma = 0 };
}

/// Which entry into the kernel a hold was taken in: the user registers saved at that entry
/// (x86_64 `struct pt_regs`: orig_ax, ip, sp). A per-VMA read lock never outlives the syscall
/// or fault that took it, so a hold seen from another entry was released unseen, whatever the
/// VMA's reader count says: readers vmalock never counts (the task_vma iterator's or a
/// /proc/PID/maps reader's lock_next_vma) can sit on the VMA meanwhile.
#[derive(Clone, Copy, PartialEq)]
#[repr(C)]
pub struct EntryId {
    orig_ax: u64,
    ip: u64,
    sp: u64,
}

/// The current task's entry into the kernel (all zero for a task without user registers).
#[inline(always)]
fn entry_id() -> EntryId {
    const ORIG_AX: usize = 120;
    const IP: usize = 128;
    const SP: usize = 152;
    let regs = unsafe { aya_ebpf::helpers::generated::bpf_task_pt_regs(aya_ebpf::helpers::generated::bpf_get_current_task_btf()) } as *const u8;
    // One read of orig_ax, ip, cs, flags, sp: a helper call costs more than the bytes.
    let r = unsafe { bpf_probe_read_kernel(regs.wrapping_add(ORIG_AX) as *const [u64; 5]) }.unwrap_or([0; 5]);
    EntryId { orig_ax: r[0], ip: r[(IP - ORIG_AX) / 8], sp: r[(SP - ORIG_AX) / 8] }
}

/// The rwsem a task holding a per-VMA read lock last passed to down_*_trylock: tid → sem.
#[map]
pub static TASK_TRYLOCK: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Argument access shared by the fentry/fexit and kprobe contexts.
pub trait Args: EbpfContext + StackIdContext {
    fn arg_u64(&self, n: usize) -> u64;
}
/// fentry/fexit arguments are typed by BTF: the verifier treats a pointer argument as a BTF
/// pointer and refuses the variable-offset arithmetic our layout reads need. Reading the slot
/// with bpf_probe_read_kernel gives a plain number instead (the slots are the trampoline's u64
/// argument array).
#[inline(always)]
fn ctx_slot<C: EbpfContext>(ctx: &C, n: usize) -> u64 {
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).wrapping_add(n)) }.unwrap_or(0)
}
impl Args for FEntryContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> u64 {
        ctx_slot(self, n)
    }
}
impl Args for FExitContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> u64 {
        ctx_slot(self, n)
    }
}
impl Args for ProbeContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> u64 {
        self.arg(n).unwrap_or(0)
    }
}

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The VMA is known not to be write-locked: what new-vma-locked and vm-flags-locked judge.
/// Anything else (write-locked, or state unreadable) no rule can turn into a verdict.
#[inline(always)]
fn unlocked_known(facts: u32) -> bool {
    facts & (fact::VMA_KNOWN | fact::VMA_WRITE_LOCKED) == fact::VMA_KNOWN
}

/// The current task is known to hold the VMA's mm's mmap_lock for write.
#[inline(always)]
fn writer_is_current(facts: u32) -> bool {
    facts & (fact::MMAP_KNOWN | fact::MMAP_WRITER_IS_CURRENT) == fact::MMAP_KNOWN | fact::MMAP_WRITER_IS_CURRENT
}

/// The mm's mmap_lock is held by someone, or its state could not be read.
#[inline(always)]
fn mmap_locked_or_unknown(facts: u32) -> bool {
    facts & fact::MMAP_KNOWN == 0 || facts & fact::MMAP_LOCKED != 0
}

/// The stack of an event that is no lock acquisition (no lock-order witness): walked only when
/// its facts leave it `judged`, a possible verdict, since no verdict shows a legal one's (in
/// `record` and `--all-events`, which send those too, the walk was most of their cost).
#[inline(always)]
fn verdict_stack_id<C: StackIdContext>(ctx: &C, judged: bool) -> i32 {
    if judged { stack_id(ctx) } else { -1 }
}

/// The task holds an rwsem lock-order watches: a lock taken now is the end of an edge.
#[inline(always)]
fn under_watched_lock(t: u32) -> bool {
    crate::emit::watching() & tracer_common::watch::LOCKS != 0 && crate::locks::holds_watched_by(t)
}

/// A kernel pointer return that is neither NULL nor an ERR_PTR.
#[inline(always)]
fn valid_ptr(p: u64) -> bool {
    p != 0 && p < (-4095i64) as u64
}

/// `ops->walk_lock`, or u64::MAX where this kernel's mm_walk_ops has none (before 6.5).
#[inline(always)]
fn walk_lock_of(ops: u64) -> u64 {
    let l = layout();
    if l.known & layout::WALK == 0 {
        return u64::MAX;
    }
    read::<u32>(ops, l.ops_walk_lock).map(u64::from).unwrap_or(u64::MAX)
}

// ---- VMA write lock: __vma_start_write(vma, …), 6.13+ (the second argument changed in 7.x) ---

#[inline(always)]
fn on_vma_start_write<C: Args>(ctx: &C) {
    let Some(t) = traced_tid() else { return };
    vma_write_locking(ctx, ctx.arg_u64(0), t);
}

/// `vma` is being write-locked by the current task (at __vma_start_write, or at the down_write
/// of its vm_lock where vma_start_write is inline), whose tid is `t`: the lock state the rule
/// needs, with the stack.
#[inline(always)]
pub fn vma_write_locking<C: EbpfContext + StackIdContext>(ctx: &C, vma: u64, t: u32) {
    let l = layout();
    learn_for(t, vma);
    let mm = vma_mm(&l, vma);
    let mmap = mmap_facts(&l, mm);
    // Legal: this task holds the mmap_lock for write (vma-write-needs-mmap-write). It is still
    // sent under a watched rwsem, where it is the taken side of a lock-order edge. The mmap_lock
    // decides it, so a kept one does not read the VMA's own state (three reads).
    let witness = writer_is_current(mmap) && !under_watched_lock(t);
    if witness && keep_legal(kind::VMA_WRITE_LOCK) {
        return;
    }
    let facts = mmap | vma_facts(&l, mm, vma);
    let stack_id = if witness { witness_stack_id(ctx) } else { stack_id(ctx) };
    let body = Body { mm, vma, args: [0, 0, 0], facts, stack_id };
    emit_body(ctx, kind::VMA_WRITE_LOCK, 0, &body);
}

#[fentry(function = "__vma_start_write")]
pub fn vma_start_write_fentry(ctx: FEntryContext) -> u32 {
    on_vma_start_write(&ctx);
    0
}

#[kprobe]
pub fn vma_start_write_kprobe(ctx: ProbeContext) -> u32 {
    on_vma_start_write(&ctx);
    0
}

// ---- page walks: entry of each walk_page_* (OPS = index of `ops`) ----------------------------

/// `MM_ARG`: the `mm` argument's index, or usize::MAX when the first argument is a VMA (or, for
/// walk_page_mapping, an address_space: no mm at all).
#[inline(always)]
fn on_walk<C: Args, const OPS: usize, const SITE: u64>(ctx: &C) {
    if !traced() {
        return;
    }
    let l = layout();
    let first = ctx.arg_u64(0);
    let (mm, vma) = match SITE {
        site::WALK_PAGE_RANGE | site::WALK_PAGE_RANGE_MM | site::WALK_PAGE_RANGE_MM_UNSAFE => (first, 0),
        site::WALK_PAGE_MAPPING => (0, 0),
        _ => (vma_mm(&l, first), first),
    };
    let mut facts = if mm != 0 { mmap_facts(&l, mm) } else { 0 };
    if vma != 0 {
        facts |= vma_facts(&l, mm, vma);
    }
    let w = walk_lock_of(ctx.arg_u64(OPS));
    // Every /proc/PID/smaps read walks each VMA: a default run kept none of them and sent each
    // with its stack, which under TCG cost as much as the read itself.
    let legal = walk_legal(SITE, mm, vma, w, facts);
    if legal && keep_legal(kind::PAGEWALK) {
        return;
    }
    // Sent: `record` and `--all-events` send every walk, a default run one only the model's
    // view of the task's holds can judge. A PGWALK_RDLOCK walk inside a hold the task's slot
    // saw sent is legal too (the smaps read's own mmap_read_lock), and goes without its stack.
    let rd_in_sent_hold = w == walk_lock::RDLOCK && mmap_locked_or_unknown(facts) && crate::fold::holds_sent(mm);
    let body = Body { mm, vma, args: [w, SITE, 0], facts, stack_id: verdict_stack_id(ctx, !(legal || rd_in_sent_hold)) };
    emit_body(ctx, kind::PAGEWALK, 0, &body);
}

/// No rule can judge this walk (model/vma.rs, PageWalk): it walks a file's mappings or an
/// mm-less VMA, its walk_lock is not one the rules know, or the facts and the task's kept
/// mmap_lock acquire show the lock its walk_lock needs held. Where only the model's own view
/// of the task's holds could tell, the walk is sent.
#[inline(always)]
fn walk_legal(site_id: u64, mm: u64, vma: u64, w: u64, facts: u32) -> bool {
    if site_id == site::WALK_PAGE_MAPPING || mm == 0 {
        return true;
    }
    let has = |f: u32| facts & f != 0;
    let writer_is_me = writer_is_current(facts);
    let vma_unlocked = vma != 0 && unlocked_known(facts);
    match w {
        walk_lock::RDLOCK => writer_is_me || (mmap_locked_or_unknown(facts) && crate::fold::holds_kept(mm)),
        walk_lock::WRLOCK => writer_is_me,
        walk_lock::WRLOCK_VERIFY => writer_is_me && !vma_unlocked,
        walk_lock::VMA_RDLOCK_VERIFY => !(vma_unlocked && has(fact::VMA_READ_KNOWN) && !has(fact::VMA_READ_LOCKED)),
        _ => true,
    }
}

macro_rules! walk_programs {
    ($fentry:ident, $kprobe:ident, $func:literal, $ops:literal, $site:expr) => {
        #[fentry(function = $func)]
        pub fn $fentry(ctx: FEntryContext) -> u32 {
            on_walk::<_, $ops, { $site }>(&ctx);
            0
        }
        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            on_walk::<_, $ops, { $site }>(&ctx);
            0
        }
    };
}

walk_programs!(walk_page_range_fentry, walk_page_range_kprobe, "walk_page_range", 3, site::WALK_PAGE_RANGE);
walk_programs!(walk_page_range_mm_fentry, walk_page_range_mm_kprobe, "walk_page_range_mm", 3, site::WALK_PAGE_RANGE_MM);
walk_programs!(walk_page_vma_fentry, walk_page_vma_kprobe, "walk_page_vma", 1, site::WALK_PAGE_VMA);
walk_programs!(walk_page_range_vma_fentry, walk_page_range_vma_kprobe, "walk_page_range_vma", 3, site::WALK_PAGE_RANGE_VMA);
walk_programs!(walk_page_range_mm_unsafe_fentry, walk_page_range_mm_unsafe_kprobe, "walk_page_range_mm_unsafe", 3, site::WALK_PAGE_RANGE_MM_UNSAFE);
walk_programs!(walk_page_range_vma_unsafe_fentry, walk_page_range_vma_unsafe_kprobe, "walk_page_range_vma_unsafe", 3, site::WALK_PAGE_RANGE_VMA_UNSAFE);
walk_programs!(walk_page_mapping_fentry, walk_page_mapping_kprobe, "walk_page_mapping", 3, site::WALK_PAGE_MAPPING);

/// The per-VMA step: `__walk_page_range(start, end, walk)`, entered after the walker applied
/// process_vma_walk_lock() to `walk->vma` (mm/pagewalk.c).
#[inline(always)]
fn on_walk_step<C: Args>(ctx: &C) {
    if !traced() {
        return;
    }
    let l = layout();
    if l.known & layout::WALK == 0 {
        return;
    }
    let walk = ctx.arg_u64(2);
    let vma = read::<u64>(walk, l.walk_vma).unwrap_or(0);
    if vma == 0 {
        return; // walk_page_range_novma: no VMA to lock
    }
    let mm = read::<u64>(walk, l.walk_mm).unwrap_or(0);
    let ops = read::<u64>(walk, l.walk_ops).unwrap_or(0);
    let facts = mmap_facts(&l, mm) | vma_facts(&l, mm, vma);
    let w = walk_lock_of(ops);
    // pagewalk-vma-write judges only a write-lock walk's step onto a VMA known unlocked.
    let judged = matches!(w, walk_lock::WRLOCK | walk_lock::WRLOCK_VERIFY) && unlocked_known(facts);
    if !judged && keep_legal(kind::PAGEWALK_VMA) {
        return;
    }
    // `record` and `--all-events` send every step, but walk the stack only of a judged one or
    // of a step onto an unlocked VMA under the task's own mmap write lock, which no rule judges
    // but which is how a walk fails to write-lock what it visits (seed item 1, mbind's
    // PGWALK_RDLOCK walk): a /proc/PID/smaps read's steps go without.
    let stack_id = verdict_stack_id(ctx, judged || (writer_is_current(facts) && unlocked_known(facts)));
    let body = Body { mm, vma, args: [w, 0, 0], facts, stack_id };
    emit_body(ctx, kind::PAGEWALK_VMA, 0, &body);
}

#[fentry(function = "__walk_page_range")]
pub fn walk_step_fentry(ctx: FEntryContext) -> u32 {
    on_walk_step(&ctx);
    0
}

#[kprobe]
pub fn walk_step_kprobe(ctx: ProbeContext) -> u32 {
    on_walk_step(&ctx);
    0
}

// ---- vma_prepare(vp): the VMAs it is handed must already be write-locked ---------------------

#[inline(always)]
fn on_vma_prepare<C: Args>(ctx: &C) {
    let Some(t) = traced_tid() else { return };
    let l = layout();
    if l.known & layout::VMA_PREPARE == 0 {
        return;
    }
    let vp = ctx.arg_u64(0);
    // struct vma_prepare's vma and adj_next are neighbours, as are remove and remove2: two
    // reads, not four (the VMA itself was read twice before).
    let (vma, adj_next) = read_two(vp, l.vp_vma, l.vp_adj_next);
    let (remove, remove2) = read_two(vp, l.vp_remove, l.vp_remove2);
    let vma = vma.unwrap_or(0);
    // vma_prepare takes this VMA's i_mmap_rwsem and anon_vma lock next.
    learn_for(t, vma);
    let mm = vma_mm(&l, vma);
    // The mm's sequence once for all four (the caller holds its mmap write lock), and only the
    // VMAs' own sequences after it: the roles need nothing else.
    let mm_seq = mm_lock_seq(&l, mm);
    let mut unlocked = 0u64;
    let mut first = 0u64;
    let roles = [
        (Some(vma), prepare_role::VMA),
        (adj_next, prepare_role::ADJ_NEXT),
        (remove, prepare_role::REMOVE),
        (remove2, prepare_role::REMOVE2),
    ];
    for (v, role) in roles {
        let v = v.unwrap_or(0);
        if v == 0 {
            continue;
        }
        if vma_write_locked(&l, mm_seq, v) == Some(false) {
            unlocked |= role;
            if first == 0 {
                first = v;
            }
        }
    }
    // Legal: every VMA it was handed is write-locked (vma-prepare-prelocked).
    if unlocked == 0 && keep_legal(kind::VMA_PREPARE) {
        return;
    }
    let facts = mmap_facts(&l, mm) | vma_facts(&l, mm, vma);
    let body = Body { mm, vma, args: [unlocked, first, 0], facts, stack_id: verdict_stack_id(ctx, unlocked != 0) };
    emit_body(ctx, kind::VMA_PREPARE, 0, &body);
}

#[fentry(function = "vma_prepare")]
pub fn vma_prepare_fentry(ctx: FEntryContext) -> u32 {
    on_vma_prepare(&ctx);
    0
}

#[kprobe]
pub fn vma_prepare_kprobe(ctx: ProbeContext) -> u32 {
    on_vma_prepare(&ctx);
    0
}

// ---- new VMAs: just inserted, still inside the caller's mmap write section -------------------

#[inline(always)]
fn on_new_vma<C: EbpfContext + StackIdContext>(ctx: &C, vma: u64, site: u64) {
    if !valid_ptr(vma) {
        return;
    }
    let Some(t) = traced_tid() else { return };
    learn_for(t, vma);
    let l = layout();
    let mm = vma_mm(&l, vma);
    let facts = mmap_facts(&l, mm) | vma_facts(&l, mm, vma);
    if !unlocked_known(facts) && keep_legal(kind::VMA_NEW) {
        return;
    }
    let body = Body { mm, vma, args: [site, 0, 0], facts, stack_id: verdict_stack_id(ctx, unlocked_known(facts)) };
    emit_body(ctx, kind::VMA_NEW, 0, &body);
}

/// `int vma_link(struct mm_struct *mm, struct vm_area_struct *vma)`: fexit only (a kretprobe
/// has no arguments).
#[fexit(function = "vma_link")]
pub fn vma_link_fexit(ctx: FExitContext) -> u32 {
    if ctx.arg_u64(2) as u32 == 0 {
        on_new_vma(&ctx, ctx.arg_u64(1), site::VMA_LINK);
    }
    0
}

/// `_install_special_mapping(mm, addr, len, vm_flags, spec)` returns the new VMA.
#[fexit(function = "_install_special_mapping")]
pub fn install_special_fexit(ctx: FExitContext) -> u32 {
    on_new_vma(&ctx, ctx.arg_u64(5), site::INSTALL_SPECIAL_MAPPING);
    0
}

#[kretprobe]
pub fn install_special_kretprobe(ctx: RetProbeContext) -> u32 {
    let vma: u64 = ctx.ret();
    on_new_vma(&ctx, vma, site::INSTALL_SPECIAL_MAPPING);
    0
}

/// `void ksm_add_vma(struct vm_area_struct *vma)` (CONFIG_KSM): mmap_region and do_brk_flags
/// call it on the VMA they have just stored in the tree, before returning. do_brk_flags'
/// final vm_flags_set write-locks the VMA anyway, so its return is too late to see whether the
/// VMA was locked when it became visible; this entry is inside that window.
#[fentry(function = "ksm_add_vma")]
pub fn ksm_add_vma_fentry(ctx: FEntryContext) -> u32 {
    on_new_vma(&ctx, ctx.arg_u64(0), site::KSM_ADD_VMA);
    0
}

#[kprobe]
pub fn ksm_add_vma_kprobe(ctx: ProbeContext) -> u32 {
    on_new_vma(&ctx, ctx.arg_u64(0), site::KSM_ADD_VMA);
    0
}

// ---- per-VMA read locks: lock_vma_under_rcu … vma_end_read ----------------------------------

#[inline(always)]
fn on_vma_read_locked(vma: u64) {
    if !valid_ptr(vma) {
        return;
    }
    let Some(t) = traced_tid() else { return };
    count(counter::VMA_READ_TAKEN);
    let Some(slot) = task_slot(t) else { return };
    learn_in(slot, vma);
    // A hold this task still had was released unseen: it cannot hold two at once here. A
    // hold of another task in the slot is dropped from the count before it is replaced.
    release(slot);
    let mut generation = 0;
    if let Some(v) = vma_holds_entry(vma) {
        // SAFETY: a valid map value (see `release` on the unlocked update).
        unsafe {
            (*v).believed += 1;
            // Every hold on the VMA right now is a reader of it, ours included: believing more
            // holds than that means some are stale. Start a new generation counting the real ones.
            // Believing one (ours) can never be more than the readers: the read is skipped, as
            // it is on most faults.
            if let Some(readers) = if (*v).believed > 1 { vma_readers(&layout(), vma) } else { None } {
                if readers > 0 && u64::from(readers) < (*v).believed {
                    (*v).believed = u64::from(readers);
                    (*v).generation += 1;
                }
            }
            generation = (*v).generation;
        }
    }
    // SAFETY: a valid map value; the slot's task writes it, or one sharing its slot. What was
    // learned through the slot stays.
    unsafe {
        (*slot).tid = t;
        (*slot).epoch = hold_epoch();
        (*slot).vma = vma;
        (*slot).generation = generation;
        (*slot).entry = entry_id();
    }
}

/// The current task's hold, if it has one.
#[inline(always)]
fn current_hold() -> Option<*mut Hold> {
    hold_of(tid())
}

/// The hold of task `t` (the current task, its tid read already), if it has one.
#[inline(always)]
fn hold_of(t: u32) -> Option<*mut Hold> {
    task_slot(t).filter(|h| unsafe { (**h).tid == t && (**h).vma != 0 })
}

/// Whether the current task is believed to hold a per-VMA read lock (trusted or not).
#[inline(always)]
fn holds_vma_read() -> bool {
    current_hold().is_some()
}

/// `struct vm_area_struct *lock_vma_under_rcu(struct mm_struct *mm, unsigned long address)`.
#[fexit(function = "lock_vma_under_rcu")]
pub fn lock_vma_fexit(ctx: FExitContext) -> u32 {
    on_vma_read_locked(ctx.arg_u64(2));
    0
}

#[kretprobe]
pub fn lock_vma_kretprobe(ctx: RetProbeContext) -> u32 {
    on_vma_read_locked(ctx.ret());
    0
}

/// Forgets the current task's VMA read lock: `vma` must match, or 0 forgets whatever it is.
#[inline(always)]
fn on_vma_read_dropped(vma: u64) {
    if let Some(h) = current_hold() {
        if vma == 0 || unsafe { (*h).vma } == vma {
            count(counter::VMA_READ_DROPPED);
            release(h);
        }
    }
}

/// 6.15+: the out-of-line half of the inline vma_end_read().
#[fentry(function = "vma_refcount_put")]
pub fn vma_refcount_put_fentry(ctx: FEntryContext) -> u32 {
    on_vma_read_dropped(ctx.arg_u64(0));
    0
}

#[kprobe]
pub fn vma_refcount_put_kprobe(ctx: ProbeContext) -> u32 {
    on_vma_read_dropped(ctx.arg_u64(0));
    0
}

/// Where vma_end_read() is fully inline (6.4-6.14), the fault path is the one user of
/// lock_vma_under_rcu: the arch fault handler calls vma_end_read() right after
/// handle_mm_fault() returns (or handle_mm_fault released it itself on RETRY/COMPLETED), and
/// nothing between the two takes a lock, so its return ends the hold.
#[fexit(function = "handle_mm_fault")]
pub fn handle_mm_fault_fexit(_ctx: FExitContext) -> u32 {
    on_vma_read_dropped(0);
    0
}

#[kretprobe]
pub fn handle_mm_fault_kretprobe(_ctx: RetProbeContext) -> u32 {
    on_vma_read_dropped(0);
    0
}

/// Tasks inside a function that may end the per-VMA read lock it just took with an inline
/// vma_end_read() and take mmap_lock for read next (mm/madvise.c madvise_lock via
/// try_vma_read_lock, mm/userfaultfd.c uffd_lock_vma): how many tasks of slot
/// `tid % TASK_SLOTS` are inside one now (an array: an LRU insert and delete per madvise cost
/// tens of µs under TCG). A hold seen there at an mmap_lock attempt was released unseen;
/// counting readers cannot tell, since another reader (a sibling's fault, a /proc/PID/maps
/// reader's lock_next_vma) may sit on the VMA. A count, not a tid: a task sharing the slot
/// makes a hold of the other one not believed meanwhile (a verdict missed, never a false one).
#[map]
static IN_DROP_THEN_LOCK: Array<u32> = Array::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
fn drop_then_lock_enter() {
    if let Some(t) = traced_tid() {
        if let Some(n) = IN_DROP_THEN_LOCK.get_ptr_mut(t % TASK_SLOTS) {
            // SAFETY: a valid map value; only tasks sharing the slot write it.
            unsafe { *n = (*n).saturating_add(1) };
        }
    }
}

#[inline(always)]
fn drop_then_lock_leave() {
    // Filtered as the enter is, so an untraced task sharing the slot cannot take a count away.
    let Some(t) = traced_tid() else { return };
    if let Some(n) = IN_DROP_THEN_LOCK.get_ptr_mut(t % TASK_SLOTS) {
        // SAFETY: as above. A leave whose enter the kernel skipped finds 0.
        unsafe { *n = (*n).saturating_sub(1) };
    }
}

/// A task of the current task's slot (almost always the task itself) is inside one of those.
#[inline(always)]
fn in_drop_then_lock(t: u32) -> bool {
    IN_DROP_THEN_LOCK.get(t % TASK_SLOTS).is_some_and(|n| *n > 0)
}

macro_rules! drop_then_lock_programs {
    ($fentry:ident, $fexit:ident, $kprobe:ident, $kretprobe:ident, $func:literal) => {
        #[fentry(function = $func)]
        pub fn $fentry(_ctx: FEntryContext) -> u32 {
            drop_then_lock_enter();
            0
        }
        #[fexit(function = $func)]
        pub fn $fexit(_ctx: FExitContext) -> u32 {
            drop_then_lock_leave();
            0
        }
        #[kprobe]
        pub fn $kprobe(_ctx: ProbeContext) -> u32 {
            drop_then_lock_enter();
            0
        }
        #[kretprobe]
        pub fn $kretprobe(_ctx: RetProbeContext) -> u32 {
            drop_then_lock_leave();
            0
        }
    };
}

drop_then_lock_programs!(madvise_lock_fentry, madvise_lock_fexit, madvise_lock_kprobe, madvise_lock_kretprobe, "madvise_lock");
drop_then_lock_programs!(uffd_lock_vma_fentry, uffd_lock_vma_fexit, uffd_lock_vma_kprobe, uffd_lock_vma_kretprobe, "uffd_lock_vma");

/// `down_read_trylock(sem)` / `down_write_trylock(sem)`: remembered only for tasks holding a
/// per-VMA read lock (one map lookup for everyone else).
#[inline(always)]
fn on_trylock<C: Args>(ctx: &C) {
    on_trylock_entry(ctx.arg_u64(0));
    if holds_vma_read() {
        let _ = TASK_TRYLOCK.insert(&tid(), &ctx.arg_u64(0), 0);
    }
}

#[fentry(function = "down_read_trylock")]
pub fn down_read_trylock_fentry(ctx: FEntryContext) -> u32 {
    on_trylock(&ctx);
    0
}

#[kprobe]
pub fn down_read_trylock_kprobe(ctx: ProbeContext) -> u32 {
    on_trylock(&ctx);
    0
}

#[fentry(function = "down_write_trylock")]
pub fn down_write_trylock_fentry(ctx: FEntryContext) -> u32 {
    on_trylock(&ctx);
    0
}

#[kprobe]
pub fn down_write_trylock_kprobe(ctx: ProbeContext) -> u32 {
    on_trylock(&ctx);
    0
}

/// Whether the current task's last trylock was on `sem`; forgets it either way.
#[inline(always)]
pub fn took_trylock(sem: u64) -> bool {
    let t = tid();
    let hit = unsafe { TASK_TRYLOCK.get(&t) }.is_some_and(|s| *s == sem);
    let _ = TASK_TRYLOCK.remove(&t);
    hit
}


/// The VMA the current task holds read-locked, if that hold can be believed now.
///
/// vma_end_read() is inline almost everywhere, so a release can go unseen; and a hook the
/// kernel skipped (recursion protection, preemption inside our program) can miss the end of a
/// fault too. With no reader left on the VMA the hold was released: it is forgotten. Otherwise
/// it is believed only while the VMA has at least as many readers as holds believed on it: in
/// a threaded process another thread faulting on the same VMA keeps a reader there after this
/// task's unseen release, and only the count tells the two apart. When it cannot, the hold is
/// not believed (never a verdict from a guess). Inside a function known to drop its hold
/// inline before taking mmap_lock (IN_DROP_THEN_LOCK) the count cannot tell either: readers
/// the hooks never counted (a /proc/PID/maps reader's lock_next_vma) may sit on the VMA.
#[inline(always)]
pub fn trusted_vma_read<C: EbpfContext>(ctx: &C) -> Option<u64> {
    let t = tid();
    let h = unsafe { *hold_of(t)? };
    // A hold from before the VMA's last reset may be one of the stale ones: not trusted. Nor is
    // one whose VMA lost its slot: nothing counts the holds on it any more.
    let counts = vma_holds(h.vma)?;
    if h.generation != counts.generation {
        return None;
    }
    let vma = h.vma;
    // The kernel skipped hook hits since it was taken (the daemon bumped the epoch): its end
    // may be one of them, and faults at the same instruction and stack share an entry id.
    if h.epoch != hold_epoch() || h.entry != entry_id() || in_drop_then_lock(t) {
        forget_vma_hold();
        return None;
    }
    match vma_readers(&layout(), vma) {
        None => Some(vma),
        Some(0) => {
            // Only the VMA hold: the task's rwsem holds (lock-order) are still real.
            forget_vma_hold();
            None
        }
        Some(readers) => {
            let b = counts.believed;
            if u64::from(readers) < b {
                // Off the hot path (a task believed to hold a VMA read lock takes a lock):
                // why a hold was not believed, for the daemon's log.
                debug!(ctx, "VMA read hold not trusted: {} readers on the VMA, {} holds believed on it", readers, b);
                return None;
            }
            Some(vma)
        }
    }
}

/// Forgets the current task's per-VMA read hold (found released) and its pending trylock.
#[inline(always)]
fn forget_vma_hold() {
    if let Some(h) = current_hold() {
        release(h);
    }
    let _ = TASK_TRYLOCK.remove(&tid());
}

/// A task that exits forgets its entries (an exit we missed is aged out by the LRU).
#[inline(always)]
pub fn forget_task() {
    crate::locks::forget_task_locks();
    forget_vma_hold();
}

// ---- VMA modifiers: what they changed, and whether the VMA was write-locked for it ----------

/// The protected fields of a VMA, as a modifier found them at entry.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Protected {
    vma: u64,
    flags: u64,
    prot: u64,
    uffd: u64,
    policy: u64,
    /// The `struct madvise_behavior *` the VMA came from (0: the VMA was an argument itself):
    /// at the return, the VMA the modifier ended with is read from it again.
    behavior: u64,
}

#[inline(always)]
fn protected(vma: u64) -> Protected {
    let l = layout();
    // vm_page_prot and vm_flags are neighbours: one read for both (kernel::read_known_two).
    let (flags, prot) = read_known_two(&l, vma, (layout::VMA_BASICS, l.vma_flags), (layout::VMA_PAGE_PROT, l.vma_page_prot));
    let (uffd, policy) = read_known_two(&l, vma, (layout::VMA_UFFD, l.vma_uffd_ctx), (layout::VMA_POLICY, l.vma_policy));
    Protected { vma, flags, prot, uffd, policy, behavior: 0 }
}

/// `madv_behavior->vma`, or 0 where this kernel has no struct madvise_behavior.
#[inline(always)]
fn behavior_vma(behavior: u64) -> u64 {
    let l = layout();
    if l.known & layout::MADV_BEHAVIOR == 0 || behavior == 0 {
        return 0;
    }
    read::<u64>(behavior, l.madv_vma).unwrap_or(0)
}

/// A modifier's stash: the VMA's fields at its entry, for the task and site it was taken at.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Modifying {
    /// The task in the modifier (0: none).
    tid: u32,
    site: u32,
    before: Protected,
}

/// The stash of the modifier each task is in, in slot `tid % TASK_SLOTS` (an array for the
/// same reason as TASK_VMA_READ: under TCG an LRU insert and delete per call cost more than
/// the rest of the program). The return half uses it only if it names the same task and site:
/// a modifier called inside another (none of the hooked ones is now) or a task sharing the slot
/// overwrites the stash, and the outer return then sends nothing (a verdict missed, never a
/// false one).
#[map]
static MODIFYING: Array<Modifying> = Array::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
fn stash(t: u32, site: u64, before: Protected) {
    if let Some(slot) = MODIFYING.get_ptr_mut(t % TASK_SLOTS) {
        // SAFETY: a valid map value.
        unsafe { *slot = Modifying { tid: t, site: site as u32, before } };
    }
}

/// The current task's stash from `site`'s entry, emptied.
#[inline(always)]
fn unstash(site: u64) -> Option<Protected> {
    let t = tid();
    let slot = MODIFYING.get_ptr_mut(t % TASK_SLOTS)?;
    // SAFETY: a valid map value.
    unsafe {
        if (*slot).tid != t || (*slot).site != site as u32 {
            return None;
        }
        (*slot).tid = 0;
        Some((*slot).before)
    }
}

#[inline(always)]
fn on_modify_entry<C: Args, const VMA: usize, const SITE: u64>(ctx: &C) {
    let Some(t) = traced_tid() else { return };
    let vma = ctx.arg_u64(VMA);
    learn_for(t, vma);
    stash(t, SITE, protected(vma));
}

/// [`on_modify_entry`] for a modifier that takes the VMA inside a `struct madvise_behavior *`
/// (argument `ARG`): madvise_update_vma since 6.16.
#[inline(always)]
fn on_modify_entry_behavior<C: Args, const ARG: usize, const SITE: u64>(ctx: &C) {
    let Some(t) = traced_tid() else { return };
    let behavior = ctx.arg_u64(ARG);
    let vma = behavior_vma(behavior);
    if vma == 0 {
        return;
    }
    learn_for(t, vma);
    stash(t, SITE, Protected { behavior, ..protected(vma) });
}

/// At the return: reads the same VMA again (kretprobes have no arguments, so the pointer comes
/// from the entry). A VMA that was write-locked for the change stays write-locked until
/// mmap_write_unlock, which comes after the modifier returns.
#[inline(always)]
fn on_modify_exit<C: EbpfContext + StackIdContext, const SITE: u64>(ctx: &C) {
    let Some(before) = unstash(SITE) else { return };
    // madvise_update_vma leaves in madv_behavior->vma the VMA vma_modify returned (a split part
    // or the merged VMA): that one carries the new flags, and must be write-locked.
    let vma = match behavior_vma(before.behavior) {
        0 => before.vma,
        now => now,
    };
    let after = protected(vma);
    let l = layout();
    let mut changed = 0u64;
    // Bits the kernel may set without the VMA write lock (Layout::vma_unlocked_flags) are no change.
    if (after.flags ^ before.flags) & !l.vma_unlocked_flags != 0 {
        changed |= tracer_common::snap::FLAGS_CHANGED;
    }
    if after.prot != before.prot {
        changed |= tracer_common::snap::PAGE_PROT_CHANGED;
    }
    if after.uffd != before.uffd {
        changed |= tracer_common::snap::UFFD_CHANGED;
    }
    if after.policy != before.policy {
        changed |= tracer_common::snap::POLICY_CHANGED;
    }
    if changed == 0 {
        return;
    }
    let mm = vma_mm(&l, vma);
    let facts = mmap_facts(&l, mm) | vma_facts(&l, mm, vma);
    if !unlocked_known(facts) && keep_legal(kind::VMA_MODIFIED) {
        return;
    }
    let body = Body { mm, vma, args: [before.flags, after.flags, SITE | (changed << 16)], facts, stack_id: verdict_stack_id(ctx, unlocked_known(facts)) };
    emit_body(ctx, kind::VMA_MODIFIED, 0, &body);
}

macro_rules! modifier_programs {
    ($fentry:ident, $fexit:ident, $kprobe:ident, $kretprobe:ident, $func:literal, $vma:literal, $site:expr) => {
        #[fentry(function = $func)]
        pub fn $fentry(ctx: FEntryContext) -> u32 {
            on_modify_entry::<_, $vma, { $site }>(&ctx);
            0
        }
        #[fexit(function = $func)]
        pub fn $fexit(ctx: FExitContext) -> u32 {
            on_modify_exit::<_, { $site }>(&ctx);
            0
        }
        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            on_modify_entry::<_, $vma, { $site }>(&ctx);
            0
        }
        #[kretprobe]
        pub fn $kretprobe(ctx: RetProbeContext) -> u32 {
            on_modify_exit::<_, { $site }>(&ctx);
            0
        }
    };
}

modifier_programs!(mprotect_fixup_fentry, mprotect_fixup_fexit, mprotect_fixup_kprobe, mprotect_fixup_kretprobe, "mprotect_fixup", 2, site::MPROTECT_FIXUP);
modifier_programs!(mlock_fixup_fentry, mlock_fixup_fexit, mlock_fixup_kprobe, mlock_fixup_kretprobe, "mlock_fixup", 1, site::MLOCK_FIXUP);
modifier_programs!(mbind_range_fentry, mbind_range_fexit, mbind_range_kprobe, mbind_range_kretprobe, "mbind_range", 1, site::MBIND_RANGE);
modifier_programs!(madvise_update_vma_fentry, madvise_update_vma_fexit, madvise_update_vma_kprobe, madvise_update_vma_kretprobe, "madvise_update_vma", 0, site::MADVISE_UPDATE_VMA);
modifier_programs!(uffd_register_fentry, uffd_register_fexit, uffd_register_kprobe, uffd_register_kretprobe, "userfaultfd_register_range", 1, site::USERFAULTFD_REGISTER_RANGE);

// 6.16+: madvise_update_vma(new_flags, madv_behavior), the VMA in madv_behavior->vma. Its
// return half is madvise_update_vma_fexit / _kretprobe: the stash says where the VMA came from.
#[fentry(function = "madvise_update_vma")]
pub fn madvise_behavior_fentry(ctx: FEntryContext) -> u32 {
    on_modify_entry_behavior::<_, 1, { site::MADVISE_UPDATE_VMA }>(&ctx);
    0
}
#[kprobe]
pub fn madvise_behavior_kprobe(ctx: ProbeContext) -> u32 {
    on_modify_entry_behavior::<_, 1, { site::MADVISE_UPDATE_VMA }>(&ctx);
    0
}
