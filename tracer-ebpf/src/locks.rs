//! The rwsems lock-order watches besides mmap_lock: `mapping->i_mmap_rwsem`, the anon_vma
//! root's `rwsem` and `inode->i_rwsem`. Their addresses are learned from the VMAs other probes
//! already see (`learn`) into `LOCK_CLASS`; the down_*/up_* hooks look every rwsem up there, so
//! any other rwsem in the kernel costs one hash lookup and sends nothing.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    Global,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, LruHashMap},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, tracing::StackIdContext},
    EbpfContext,
};
use tracer_common::{counter, fact, flag, kind, layout, lock_class};

use crate::{
    task::TASK_SLOTS,
    emit::{Body, default_run, emit_body, stack_id, traced, traced_tid},
    kernel::{layout, read, read_known_two},
    vma::{Args, trusted_vma_read},
};

/// rwsem address → [`lock_class`]. LRU: addresses of freed mappings and anon_vmas age out.
#[map]
pub static LOCK_CLASS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// `vma->vm_lock->lock` → vma, for [`lock_class::VMA_WRITE`] rwsems.
#[map]
static VM_LOCK_VMA: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Non-zero where vma_start_write is inline and its rwsem is `vma->vm_lock->lock` (6.4-6.12,
/// no `__vma_start_write`): set by the loader.
#[unsafe(no_mangle)]
static VM_LOCK_WRITES: Global<u32> = Global::new(0);

/// A watched rwsem a task passed to down_*_trylock, for the kretprobe (which has no arguments).
#[map]
static TRY_PENDING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// (task, rwsem) → the class the task took it as.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct HeldKey {
    sem: u64,
    tid: u32,
    _pad: u32,
}

/// What each task holds, so that its release is reported as the class it was taken as, even
/// when LOCK_CLASS changed or lost the address meanwhile (a recycled address relearned as
/// another class, an entry aged out of the LRU). Otherwise the hold would outlive its unlock
/// and every later lock of the task would look taken under it (false lock-order edges).
#[map]
static HELD_AS: LruHashMap<HeldKey, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn held_key(me: &Me, sem: u64) -> HeldKey {
    HeldKey { sem, tid: me.tid, _pad: 0 }
}

/// How many watched rwsems a task holds (as far as seen), in slot `tid % TASK_SLOTS` tagged
/// with the tid: an mmap_lock attempt under one carries its kernel stack, the "taken" side of a
/// lock-order edge. An array, not a hash: every mmap_lock attempt looks it up, and the verifier
/// inlines an array lookup. A slot is taken from another task only while that task holds none;
/// a task that cannot have one goes uncounted (an edge's stack missed, never a false edge: the
/// model finds edges from the lock events themselves).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Held {
    tid: u32,
    n: u32,
    /// Which classes it holds and how: a 4-bit count per (class, mode) ([`class_bit`]), the
    /// held side of [`ChainKey`].
    classes: u64,
    /// A default run's acquisition kept back ([`keep_acquire`]): its rwsem (0: none), class,
    /// time, CPU and flags.
    kept_sem: u64,
    kept_class: u64,
    kept_ts: u64,
    kept_cpu: u32,
    kept_flags: u32,
}

const NO_HOLD: Held = Held { tid: 0, n: 0, classes: 0, kept_sem: 0, kept_class: 0, kept_ts: 0, kept_cpu: 0, kept_flags: 0 };

#[map]
static TASK_HELD: Array<Held> = Array::with_max_entries(TASK_SLOTS, 0);

/// The current task and its TASK_HELD slot (whoever it is tagged with), looked up once per
/// hook hit and handed to every step of it: a lock-order acquisition in a default run looked
/// the slot up (and read the tid) three times, in chain_stack_id, keep_acquire and held_add.
#[derive(Clone, Copy)]
struct Me {
    tid: u32,
    slot: *mut Held,
}

/// The current task, whose `tid` the caller read (with the filter: emit::traced_tid), and its
/// slot. None only if the array lookup fails, which an index below TASK_SLOTS never does.
#[inline(always)]
fn me_of(tid: u32) -> Option<Me> {
    TASK_HELD.get_ptr_mut(tid % TASK_SLOTS).map(|slot| Me { tid, slot })
}

/// Whether the current task holds a watched rwsem.
#[inline(always)]
pub fn holds_watched() -> bool {
    holds_watched_by(tid())
}

/// [`holds_watched`] for the current task, its tid `t` read already.
#[inline(always)]
pub fn holds_watched_by(t: u32) -> bool {
    TASK_HELD.get(t % TASK_SLOTS).is_some_and(|h| h.tid == t && h.n > 0)
}

/// One hold of `class` taken as `write`, as counted in [`Held::classes`]. Classes are below 8
/// (tracer_common::lock_class), so 16 counters of 4 bits; more than 15 holds of one (class,
/// mode) carry into the next counter, which costs at most a stack ([`chain_stack_id`]).
#[inline(always)]
fn class_bit(class: u64, write: bool) -> u64 {
    1u64 << (((class & 7) * 2 + write as u64) * 4)
}

#[inline(always)]
fn held_add(me: &Me, up: bool, class: u64, write: bool) {
    let (t, h) = (me.tid, me.slot);
    let bit = class_bit(class, write);
    // SAFETY: a valid map value; its count is only changed by the task it is tagged with.
    unsafe {
        if (*h).tid == t {
            if up {
                (*h).n = (*h).n.saturating_add(1);
                (*h).classes = (*h).classes.wrapping_add(bit);
            } else if (*h).n > 0 {
                (*h).n -= 1;
                (*h).classes = if (*h).n == 0 { 0 } else { (*h).classes.wrapping_sub(bit) };
            }
        } else if up && (*h).n == 0 {
            *h = Held { tid: t, n: 1, classes: bit, ..NO_HOLD };
        }
    }
}

/// What decides which lock-order edges an acquisition adds (model/lockorder.rs `acquire`): the
/// classes and modes the task holds, its mmap_lock holds and the acquired class. Two
/// acquisitions with the same key add the same edges, except where the fold slot's summary of
/// the mmap_lock holds ([`crate::fold::held_summary`]) cannot tell two orders of them apart.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ChainKey {
    held: u64,
    mmap: u32,
    /// class | write << 8 | trylock << 9 | per-VMA read lock held << 10.
    taken: u32,
}

/// Per chain key: when an acquisition along it last walked its stack.
#[map]
static CHAIN_STACK_AT: LruHashMap<ChainKey, u64> = LruHashMap::with_max_entries(4096, 0);

/// How often one chain's acquisition walks its stack in a default run.
const CHAIN_STACK_EVERY_NS: u64 = 1_000_000_000;

/// The stack of a watched rwsem's acquisition: walked in a default run only for the first
/// acquisition along its chain of held locks in a second. The model adds a chain's edges once,
/// with the first acquisition's stack, and gives one first seen without a stack the next
/// stack along it (lockorder.rs `give_stack`); every other acquisition's stack is shown only
/// as the held side of an edge taken under it, which lockdep does not keep either. Every
/// anon_vma and i_mmap `down_write` of fork and exit walked its stack, 16 us a run under TCG.
/// `record` and `--all-events` walk every one.
///
/// `Err(now)` where the chain was stacked within the second: no stack, and the acquisition
/// may be kept back ([`keep_acquire`]).
#[inline(always)]
fn chain_stack_id<C: StackIdContext>(ctx: &C, me: &Me, class: u64, write: bool, trylock: bool, vma_read: bool) -> Result<i32, u64> {
    if !default_run() {
        return Ok(stack_id(ctx));
    }
    // SAFETY: a valid map value (read only).
    let held = match unsafe { &*me.slot } {
        h if h.tid == me.tid => h.classes,
        h if h.n == 0 => 0,
        // Another task has the slot: this task's holds are not counted (so for both slots).
        _ => return Ok(stack_id(ctx)),
    };
    let Some(mmap) = crate::fold::held_summary(me.tid) else { return Ok(stack_id(ctx)) };
    let taken = (class as u32 & 0xff) | (write as u32) << 8 | (trylock as u32) << 9 | (vma_read as u32) << 10;
    let key = ChainKey { held, mmap, taken };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match CHAIN_STACK_AT.get_ptr_mut(&key) {
        // SAFETY: a valid map value; a race between CPUs costs one stack more or less.
        Some(at) => unsafe {
            if now.wrapping_sub(*at) < CHAIN_STACK_EVERY_NS {
                return Err(now);
            }
            *at = now;
        },
        None => {
            let _ = CHAIN_STACK_AT.insert(&key, &now, 0);
        }
    }
    Ok(stack_id(ctx))
}

/// Keeps a successful plain acquisition back (default runs), as crate::fold keeps an mmap_lock
/// acquire: its chain was sent within the second, so the model learns nothing from it but the
/// hold. If the task releases it next, the pair is dropped ([`drop_kept`]); anything else the
/// task sends first sends it ahead ([`take_kept`], from emit.rs). One per task, in its
/// TASK_HELD slot (taken if free, as `held_add` would). True if kept.
#[inline(always)]
fn keep_acquire(me: &Me, sem: u64, class: u64, flags: u16, now: u64) -> bool {
    let (t, h) = (me.tid, me.slot);
    // SAFETY: a valid map value, written only by the task it is tagged with (or taken free).
    unsafe {
        if (*h).tid != t {
            if (*h).n != 0 {
                return false;
            }
            *h = Held { tid: t, ..NO_HOLD };
        }
        if (*h).kept_sem != 0 {
            return false;
        }
        (*h).kept_sem = sem;
        (*h).kept_class = class;
        (*h).kept_ts = now;
        (*h).kept_cpu = bpf_get_smp_processor_id();
        (*h).kept_flags = u32::from(flags);
    }
    crate::emit::kept_hit(kind::LOCK_ACQUIRE);
    true
}

/// The release of the kept acquisition of `sem`: its class if there was one (neither is sent).
#[inline(always)]
fn drop_kept(me: &Me, sem: u64) -> Option<u64> {
    let (t, h) = (me.tid, me.slot);
    // SAFETY: as in keep_acquire.
    let class = unsafe {
        if (*h).tid != t || (*h).kept_sem != sem || sem == 0 {
            return None;
        }
        (*h).kept_sem = 0;
        (*h).kept_class
    };
    crate::emit::kept_hit(kind::LOCK_RELEASE);
    crate::emit::count(counter::LOCK_PAIRS_FOLDED);
    Some(class)
}

/// A kept acquisition to send ahead of another event of task `tid` (the current one).
pub struct KeptLock {
    pub sem: u64,
    pub class: u64,
    pub ts_ns: u64,
    pub cpu: u32,
    pub flags: u16,
}

#[inline(always)]
pub fn take_kept(tid: u32) -> Option<KeptLock> {
    let h = TASK_HELD.get_ptr_mut(tid % TASK_SLOTS)?;
    // SAFETY: as in keep_acquire.
    unsafe {
        if (*h).tid != tid || (*h).kept_sem == 0 {
            return None;
        }
        let k = KeptLock { sem: (*h).kept_sem, class: (*h).kept_class, ts_ns: (*h).kept_ts, cpu: (*h).kept_cpu, flags: (*h).kept_flags as u16 };
        (*h).kept_sem = 0;
        // Sent now: its release finds its class as any sent acquisition's does.
        let _ = HELD_AS.insert(&HeldKey { sem: k.sem, tid, _pad: 0 }, &k.class, 0);
        Some(k)
    }
}

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Sets `key` to `value` unless it already is: learn() sees the same VMAs over and over (every
/// vma_start_write and per-VMA read lock), and a lookup costs far less than an LRU update,
/// which takes a new element and frees the old one each time.
#[inline(always)]
fn remember(map: &LruHashMap<u64, u64>, key: u64, value: u64) {
    if unsafe { map.get(&key) }.copied() != Some(value) {
        let _ = map.insert(&key, &value, 0);
    }
}

/// Remembers the rwsems reachable from `vma`: its file's i_mmap_rwsem and i_rwsem, its
/// anon_vma root's rwsem (include/linux/rmap.h anon_vma_lock_write locks `root->rwsem`).
#[inline(always)]
pub fn learn(vma: u64) {
    let key = learn_key(vma);
    learn_from(&key);
}

/// What [`learn`] reads from a VMA: the VMA, its vm_lock (0 unless vma_start_write is inline
/// on this kernel), file and anon_vma. A task faulting over and over on one VMA sees the same
/// key each time, and the fault path then skips the rest (crate::vma keeps the last key).
#[derive(Clone, Copy, PartialEq)]
#[repr(C)]
pub struct LearnKey {
    vma: u64,
    vm_lock: u64,
    file: u64,
    anon: u64,
}

impl LearnKey {
    /// Learning from `other` would remember nothing learning from `self` did not: the same
    /// vm_lock, file and anon_vma. The VMA itself only matters through its vm_lock's pairing
    /// (VM_LOCK_VMA), so VMAs of one mapping (split, merged, neighbours) share what they teach.
    #[inline(always)]
    pub fn same_classes(&self, other: &LearnKey) -> bool {
        self.vm_lock == other.vm_lock && self.file == other.file && self.anon == other.anon && (self.vm_lock == 0 || self.vma == other.vma)
    }
}

#[inline(always)]
pub fn learn_key(vma: u64) -> LearnKey {
    let l = layout();
    let field = |bit: u32, off: u32| if vma != 0 && l.known & bit != 0 { read::<u64>(vma, off).unwrap_or(0) } else { 0 };
    let vm_lock = if VM_LOCK_WRITES.load() != 0 { field(layout::VMA_VM_LOCK, l.vma_vm_lock) } else { 0 };
    // A VMA 0 reads nothing (kernel::read), as `field` checks.
    let (file, anon) = read_known_two(&l, vma, (layout::LOCK_FILE, l.vma_file), (layout::LOCK_ANON, l.vma_anon_vma));
    LearnKey { vma, vm_lock, file, anon }
}

#[inline(always)]
pub fn learn_from(k: &LearnKey) {
    if k.vma == 0 {
        return;
    }
    let l = layout();
    if k.vm_lock != 0 {
        let sem = k.vm_lock + l.vma_lock_rwsem as u64;
        remember(&VM_LOCK_VMA, sem, k.vma);
        remember(&LOCK_CLASS, sem, lock_class::VMA_WRITE);
    }
    if k.file != 0 {
        if let Some(mapping) = read::<u64>(k.file, l.file_mapping).filter(|m| *m != 0) {
            remember(&LOCK_CLASS, mapping + l.mapping_i_mmap_rwsem as u64, lock_class::I_MMAP_RWSEM);
        }
        if let Some(inode) = read::<u64>(k.file, l.file_inode).filter(|i| *i != 0) {
            remember(&LOCK_CLASS, inode + l.inode_i_rwsem as u64, lock_class::I_RWSEM);
        }
    }
    if k.anon != 0 {
        let root = read::<u64>(k.anon, l.anon_vma_root).filter(|r| *r != 0).unwrap_or(k.anon);
        remember(&LOCK_CLASS, root + l.anon_vma_rwsem as u64, lock_class::ANON_VMA);
    }
}

/// `vma` is being freed (__vm_area_free, which frees its vma_lock too): forget the pairing
/// before either object is recycled. Runs for every VMA freed (RCU callbacks included), so no
/// task filter: one lookup.
#[inline(always)]
pub fn forget_vma(vma: u64) {
    if VM_LOCK_WRITES.load() == 0 || vma == 0 {
        return;
    }
    let l = layout();
    if let Some(lock) = read::<u64>(vma, l.vma_vm_lock).filter(|p| *p != 0) {
        let sem = lock + l.vma_lock_rwsem as u64;
        if unsafe { VM_LOCK_VMA.get(&sem) }.is_some_and(|v| *v == vma) {
            let _ = VM_LOCK_VMA.remove(&sem);
            let _ = LOCK_CLASS.remove(&sem);
        }
    }
}

#[inline(always)]
fn class_of(sem: u64) -> Option<u64> {
    unsafe { LOCK_CLASS.get(&sem) }.copied()
}

/// A lock-order class (not the VMA write lock's rwsem, which only down_write reports).
#[inline(always)]
fn order_class_of(sem: u64) -> Option<u64> {
    class_of(sem).filter(|c| *c != lock_class::VMA_WRITE)
}

/// Sends a lock event of the current, traced task `me`; true if a default run kept the
/// acquisition back instead.
#[inline(always)]
fn send<C: EbpfContext + StackIdContext>(ctx: &C, me: &Me, k: u16, sem: u64, class: u64, write: bool, success: bool, trylock: bool) -> bool {
    let mut facts = if trylock { fact::TRYLOCK } else { 0 };
    // A per-VMA read lock held under the acquire is the vma_lock side of an edge.
    let held = if k == kind::LOCK_ACQUIRE { trusted_vma_read(ctx) } else { None };
    let vma = match held {
        Some(v) => {
            facts |= fact::TASK_VMA_READ;
            v
        }
        None => 0,
    };
    let mut flags = if write { flag::WRITE } else { 0 };
    if success {
        flags |= flag::SUCCESS;
    }
    // Only an acquire's stack is ever shown (a lock-order edge's two sides); a release is never
    // a verdict, and a stack walk is the dearest part of an event under TCG.
    let stack_id = if k == kind::LOCK_ACQUIRE {
        match chain_stack_id(ctx, me, class, write, trylock, held.is_some()) {
            Ok(id) => id,
            Err(now) => {
                if success && !trylock && held.is_none() && keep_acquire(me, sem, class, flags, now) {
                    return true;
                }
                -1
            }
        }
    } else {
        -1
    };
    let body = Body { mm: 0, vma, args: [sem, class, 0], facts, stack_id };
    emit_body(ctx, k, flags, &body);
    false
}

/// down_read / down_write entry: the task is about to wait (lockdep validates here too).
#[inline(always)]
fn on_down<C: Args, const WRITE: bool>(ctx: &C) {
    // Every down_read/down_write in the kernel comes here: under -p/-c another process's
    // task pays the filter check only, not the hash lookup.
    let Some(t) = traced_tid() else { return };
    let sem = ctx.arg_u64(0);
    if let Some(class) = class_of(sem) {
        if class == lock_class::VMA_WRITE {
            if WRITE {
                if let Some(vma) = unsafe { VM_LOCK_VMA.get(&sem) }.copied() {
                    // The vma_lock is allocated apart from its VMA (6.4-6.12) and both are
                    // recycled: believe the pairing only while the VMA still points at this lock.
                    let l = layout();
                    let lock = read::<u64>(vma, l.vma_vm_lock);
                    if lock.is_some_and(|p| p != 0 && p + l.vma_lock_rwsem as u64 == sem) {
                        crate::vma::vma_write_locking(ctx, vma, t);
                    } else {
                        let _ = VM_LOCK_VMA.remove(&sem);
                        let _ = LOCK_CLASS.remove(&sem);
                    }
                }
            }
            return;
        }
        let Some(me) = me_of(t) else { return };
        // The chain key is of what was held before this one.
        let kept = send(ctx, &me, kind::LOCK_ACQUIRE, sem, class, WRITE, true, false);
        held_add(&me, true, class, WRITE);
        // A kept one is remembered in the slot, and here once sent (take_kept).
        if !kept {
            let _ = HELD_AS.insert(&held_key(&me, sem), &class, 0);
        }
    }
}

#[inline(always)]
fn on_up<C: Args, const WRITE: bool>(ctx: &C) {
    // Every up_read/up_write in the kernel comes here: an untraced task pays one check only.
    let Some(t) = traced_tid() else { return };
    let sem = ctx.arg_u64(0);
    let Some(me) = me_of(t) else { return };
    if let Some(class) = drop_kept(&me, sem) {
        held_add(&me, false, class, WRITE);
        return;
    }
    // The class it was taken as, if this task took it; else what the address is known as now
    // (a release by another task than the one that took it: up_read_non_owner).
    let key = held_key(&me, sem);
    let class = match unsafe { HELD_AS.get(&key) }.copied() {
        Some(c) => {
            let _ = HELD_AS.remove(&key);
            Some(c)
        }
        None => order_class_of(sem),
    };
    if let Some(class) = class {
        held_add(&me, false, class, WRITE);
        send(ctx, &me, kind::LOCK_RELEASE, sem, class, WRITE, true, false);
    }
}

/// A task that exits forgets its count.
#[inline(always)]
pub fn forget_task_locks() {
    let t = tid();
    if let Some(h) = TASK_HELD.get_ptr_mut(t % TASK_SLOTS) {
        // SAFETY: a valid map value; only its own task frees it.
        unsafe {
            if (*h).tid == t {
                *h = NO_HOLD;
            }
        }
    }
    let _ = TRY_PENDING.remove(&tid());
}

/// down_*_trylock entry (called from vma.rs's trylock programs): stash a watched rwsem.
#[inline(always)]
pub fn on_trylock_entry(sem: u64) {
    if !traced() {
        return;
    }
    if order_class_of(sem).is_some() {
        let _ = TRY_PENDING.insert(&tid(), &sem, 0);
    } else {
        // A stash left by a skipped return must not be taken for this trylock's (kretprobes
        // have no arguments to check it against).
        let _ = TRY_PENDING.remove(&tid());
    }
}

/// A trylock returned. `arg` is its rwsem where the hook has the arguments (fexit): then the
/// stash is only a fallback's, and is checked against it. A return hit the kernel skipped
/// (recursion protection) leaves its stash behind, and the task's next trylock of any rwsem,
/// watched or not, would otherwise report that old rwsem as taken: a hold nothing releases.
#[inline(always)]
fn on_trylock_return<C: EbpfContext + StackIdContext, const WRITE: bool>(ctx: &C, ret: u64, arg: Option<u64>) {
    // Every trylock return in the kernel comes here: only one whose entry stashed a watched
    // rwsem goes on to the task's slot.
    let t = tid();
    let Some(sem) = (unsafe { TRY_PENDING.get(&t) }).copied() else { return };
    let _ = TRY_PENDING.remove(&t);
    if arg.is_some_and(|a| a != sem) {
        return;
    }
    let Some(me) = me_of(t) else { return };
    if let Some(class) = class_of(sem) {
        let success = ret as u32 == 1;
        // The entry stashed it only for a traced task.
        send(ctx, &me, kind::LOCK_ACQUIRE, sem, class, WRITE, success, true);
        if success {
            held_add(&me, true, class, WRITE);
            let _ = HELD_AS.insert(&held_key(&me, sem), &class, 0);
        }
    }
}

macro_rules! entry_programs {
    ($fentry:ident, $kprobe:ident, $func:literal, $handler:ident, $write:literal) => {
        #[fentry(function = $func)]
        pub fn $fentry(ctx: FEntryContext) -> u32 {
            $handler::<_, $write>(&ctx);
            0
        }
        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            $handler::<_, $write>(&ctx);
            0
        }
    };
}

/// `void __vm_area_free(struct vm_area_struct *vma)` (6.4-6.12 kernel/fork.c).
#[fentry(function = "__vm_area_free")]
pub fn vm_area_free_fentry(ctx: FEntryContext) -> u32 {
    forget_vma(ctx.arg_u64(0));
    0
}

#[kprobe]
pub fn vm_area_free_kprobe(ctx: ProbeContext) -> u32 {
    forget_vma(ctx.arg_u64(0));
    0
}

entry_programs!(down_read_fentry, down_read_kprobe, "down_read", on_down, false);
entry_programs!(down_write_fentry, down_write_kprobe, "down_write", on_down, true);
entry_programs!(up_read_fentry, up_read_kprobe, "up_read", on_up, false);
entry_programs!(up_write_fentry, up_write_kprobe, "up_write", on_up, true);

/// `int down_read_trylock(struct rw_semaphore *sem)`: fexit slot 1 is the return value.
#[fexit(function = "down_read_trylock")]
pub fn down_read_trylock_fexit(ctx: FExitContext) -> u32 {
    on_trylock_return::<_, false>(&ctx, ctx.arg_u64(1), Some(ctx.arg_u64(0)));
    0
}

#[kretprobe]
pub fn down_read_trylock_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    on_trylock_return::<_, false>(&ctx, ret, None);
    0
}

#[fexit(function = "down_write_trylock")]
pub fn down_write_trylock_fexit(ctx: FExitContext) -> u32 {
    on_trylock_return::<_, true>(&ctx, ctx.arg_u64(1), Some(ctx.arg_u64(0)));
    0
}

#[kretprobe]
pub fn down_write_trylock_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    on_trylock_return::<_, true>(&ctx, ret, None);
    0
}
