//! The one path every hook takes to userspace: filter, count, fill a RawEvent, submit.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf, StackTrace},
    programs::tracing::StackIdContext,
};
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use tracer_common::{Config, RawEvent, TGID_ALL, counter, fact, flag, kind_bit};

use crate::fold;

/// Offset of `task_struct.start_time`, resolved by name from the running kernel's BTF and set
/// by the loader. A load-time constant so the verifier sees a fixed offset.
#[unsafe(no_mangle)]
static OFF_TASK_START_TIME: Global<u64> = Global::new(0);

/// Size is set by the loader (`--ring-size`); this is only the default.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Failed reserves on every CPU together: the loss epoch each event carries.
#[map]
static LOSS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32, by: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, and preemption is off in these programs.
        unsafe { *c += by };
    }
}

#[inline(always)]
fn take_pending_lost() -> u32 {
    match COUNTERS.get_ptr_mut(counter::LOST_PENDING) {
        Some(c) => unsafe {
            let n = *c;
            *c = 0;
            n as u32
        },
        None => 0,
    }
}

/// True when the current task started at or after `start_ns`: it was traced from birth.
#[inline(always)]
fn current_task_is_new(start_ns: u64) -> bool {
    let off = OFF_TASK_START_TIME.load();
    if off == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    match unsafe { bpf_probe_read_kernel(task.wrapping_add(off as usize) as *const u64) } {
        Ok(started) => started >= start_ns,
        Err(_) => {
            // Only a bad offset gets here (the current task is always mapped). Counted, and the
            // daemon says so: an aya-log call here, inlined into every program that sends an
            // event, was about two thirds of all the instructions the verifier walked (618 k
            // against 225 k), which is seconds of start-up in a TCG guest.
            bump(counter::START_TIME_UNREADABLE, 1);
            false
        }
    }
}

/// The kind-specific part of an event.
#[derive(Clone, Copy, Default)]
pub struct Body {
    pub mm: u64,
    pub vma: u64,
    pub args: [u64; 3],
    pub facts: u32,
    pub stack_id: i32,
}

/// Kernel stacks of the events that may prove a VMA rule broken (`RawEvent::stack_id`).
/// Without BPF_F_REUSE_STACKID a hash collision gives no stack rather than a wrong one.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// The current kernel stack's id in STACKS, or -1.
#[inline(always)]
pub fn stack_id<C: StackIdContext>(ctx: &C) -> i32 {
    ctx.get_stackid(&STACKS, 0).map(|id| id as i32).unwrap_or(-1)
}

/// Per CPU: when the last legal VMA write lock got a stack ([`witness_stack_id`]).
#[map]
static WITNESS_STACK_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// How often, per CPU, a legal VMA write lock gets a stack.
const WITNESS_STACK_EVERY_NS: u64 = 10_000_000;

/// The stack of a VMA write lock its facts show legal, in a run that sends those (`record`,
/// `--all-events`; a default run keeps them in the kernel). No verdict shows it, but the first
/// one of a lock chain is the witness of the mmap_lock -> vma_lock edge a lock-order report
/// prints. Walking the stack was most of such an event's cost (7.2 TCG guest, mprotect loop:
/// 18 us of __vma_start_write's program against 2 us without), so one per CPU every 10 ms
/// gets one; the model gives a chain first seen without a stack the next stack that comes.
#[inline(always)]
pub fn witness_stack_id<C: StackIdContext>(ctx: &C) -> i32 {
    let Some(at) = WITNESS_STACK_AT.get_ptr_mut(0) else { return -1 };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; programs here do not migrate while they run.
    unsafe {
        if *at != 0 && now.wrapping_sub(*at) < WITNESS_STACK_EVERY_NS {
            return -1;
        }
        *at = now;
    }
    stack_id(ctx)
}

/// `Config::watch`: which per-task maps the mmap_lock hooks should look at.
#[inline(always)]
pub fn watching() -> u32 {
    CONFIG.get(0).map(|c| c.watch).unwrap_or(0)
}

/// The filter: true when the current task is traced (CONFIG's tgid, and its comm if set).
#[inline(always)]
pub fn traced() -> bool {
    let Some(cfg) = CONFIG.get(0) else { return false };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    passes(cfg, tgid)
}

/// [`traced`], giving the current task's tid when it is: one helper call where `traced()`
/// then a tid read made two.
#[inline(always)]
pub fn traced_tid() -> Option<u32> {
    let cfg = CONFIG.get(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    passes(cfg, (pid_tgid >> 32) as u32).then_some(pid_tgid as u32)
}

/// The current task (of thread group `tgid`) passes the TGID and comm filters.
#[inline(always)]
fn passes(cfg: &Config, tgid: u32) -> bool {
    passes_as(cfg, tgid, || bpf_get_current_comm().unwrap_or([0; 16]))
}

/// A task of thread group `tgid` whose comm `comm()` gives (read only when a comm filter is
/// set) passes the TGID and comm filters.
#[inline(always)]
fn passes_as(cfg: &Config, tgid: u32, comm: impl FnOnce() -> [u8; 16]) -> bool {
    tgid_passes(cfg, tgid) && (cfg.comm_filter == 0 || same_comm(&comm(), &cfg.comm))
}

#[inline(always)]
fn tgid_passes(cfg: &Config, tgid: u32) -> bool {
    cfg.tgid == TGID_ALL || cfg.tgid == tgid
}

/// Two NUL-padded comms compared as two words: a byte loop could become a memcmp call, which
/// BPF does not have.
#[inline(always)]
fn same_comm(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let word = |c: &[u8; 16], at: usize| {
        let mut w = 0u64;
        let mut i = 0;
        while i < 8 {
            w |= (c[at + i] as u64) << (8 * i);
            i += 1;
        }
        w
    };
    word(a, 0) == word(b, 0) && word(a, 8) == word(b, 8)
}

/// The TGID filter for another task's thread group (its comm is checked where it is read:
/// [`emit_for`]).
#[inline(always)]
pub fn traced_tgid(tgid: u32) -> bool {
    CONFIG.get(0).is_some_and(|cfg| tgid_passes(cfg, tgid))
}

/// Counts an aggregated occurrence (per CPU) without sending anything.
#[inline(always)]
pub fn count(index: u32) {
    bump(index, 1);
}

/// A default run (balanced mmap_lock pairs folded, legal events kept, stacks walked only where
/// a report can show them); `record` and `--all-events` send everything with its stack.
#[inline(always)]
pub fn default_run() -> bool {
    CONFIG.get(0).is_some_and(|c| c.fold != 0)
}

/// A hook hit kept in the kernel (a folded lock-order rwsem pair's half): counted as seen.
#[inline(always)]
pub fn kept_hit(kind: u16) {
    bump(counter::SEEN_BASE + kind as u32, 1);
}

/// A default run keeps in the kernel a VMA event whose facts, read at the hook, already show
/// it legal: no rule can turn it into a verdict, and under TCG each such event (with its
/// stack) cost more than the work it was about. It still counts as a hook hit, and as kept.
/// True when the caller must not send it; `record` and `--all-events` send everything. The
/// caller has checked the filter.
#[inline(always)]
pub fn keep_legal(kind: u16) -> bool {
    let Some(cfg) = CONFIG.get(0) else { return false };
    if cfg.fold == 0 {
        return false;
    }
    bump(counter::SEEN_BASE + kind as u32, 1);
    bump(counter::LEGAL_KEPT, 1);
    true
}

/// Sends one event of `kind` about `mm` if the current task passes the filter.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, kind: u16, mm: u64, flags: u16) {
    emit_body(ctx, kind, flags, &Body { mm, stack_id: -1, ..Default::default() });
}

/// Sends one event with a full body if the current task passes the filter.
#[inline(always)]
pub fn emit_body<C: EbpfContext>(ctx: &C, kind: u16, flags: u16, body: &Body) {
    emit_body_if(ctx, kind, flags, body, false);
}

/// [`emit_body`] for an event a rule needs whatever kinds are sent by default (an mmap_lock
/// attempt while a watched rwsem is held: the lock-order edge's own side).
#[inline(always)]
pub fn emit_body_needed<C: EbpfContext>(ctx: &C, kind: u16, flags: u16, body: &Body) {
    emit_body_if(ctx, kind, flags, body, true);
}

#[inline(always)]
fn emit_body_if<C: EbpfContext>(_ctx: &C, kind: u16, mut flags: u16, body: &Body, needed: bool) {
    let Some(cfg) = CONFIG.get(0) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Read once, when first needed: by the --comm filter, or by the first event sent (a kept
    // acquire sent ahead of this one is the same task's).
    let mut comm_read = None;
    let mut comm = || *comm_read.get_or_insert_with(|| bpf_get_current_comm().unwrap_or([0; 16]));
    if !passes_as(cfg, tgid, &mut comm) {
        return;
    }
    bump(counter::SEEN_BASE + kind as u32, 1);
    // An mmap_lock attempt under a per-VMA read lock is what no-mmap-under-vma-read needs,
    // whatever kinds are sent otherwise.
    if cfg.send_mask & kind_bit(kind) == 0 && body.facts & fact::TASK_VMA_READ == 0 && !needed {
        return;
    }
    let lock_event = kind == tracer_common::kind::MMAP_ACQUIRED || kind == tracer_common::kind::MMAP_RELEASED;
    let acquire = kind == tracer_common::kind::MMAP_ACQUIRED;
    // Default runs: balanced mmap_lock pairs stay in the kernel (crate::fold).
    let slot = if cfg.fold != 0 { fold::slot(pid_tgid as u32, acquire && flags & flag::SUCCESS != 0) } else { None };
    // `record` and `--all-events` fold nothing, but follow the task's holds in its slot too
    // (fold::holds_sent: which page walks go without their stack).
    if cfg.fold == 0 && lock_event {
        if let Some(s) = fold::slot(pid_tgid as u32, acquire && flags & flag::SUCCESS != 0) {
            s.sent(acquire, body.mm, flags);
        }
    }
    let mut at = None;
    // Read once: a kept acquire sent ahead of this event is the same task's.
    let mut task_new = None;
    let mut is_new = || *task_new.get_or_insert_with(|| current_task_is_new(cfg.start_ns));
    if let Some(slot) = &slot {
        if kind == tracer_common::kind::MMAP_RELEASED && slot.fold_release(body.mm, flags) {
            return;
        }
        let plain_acquire =
            acquire && flags & flag::SUCCESS != 0 && body.facts == 0 && !needed;
        // Before the kept acquire is sent: a downgrade of it is kept with it.
        if plain_acquire && flags & flag::WRITE == 0 && slot.keep_downgrade(body.mm) {
            return;
        }
        if let Some(k) = slot.take_kept() {
            let mut kflags = k.flags | flag::TS_COARSE;
            if is_new() {
                kflags |= flag::TASK_NEW;
            }
            let kept = Body { mm: k.mm, stack_id: -1, ..Default::default() };
            let comm = comm();
            submit_at(tracer_common::kind::MMAP_ACQUIRED, kflags, &kept, pid_tgid as u32, tgid, comm, Some((k.ts_ns, k.cpu)));
            slot.sent(true, k.mm, k.flags);
            if let Some(at) = k.downgrade {
                let dflags = (kflags & flag::TASK_NEW) | flag::SUCCESS | flag::TS_COARSE;
                submit_at(tracer_common::kind::MMAP_ACQUIRED, dflags, &kept, pid_tgid as u32, tgid, comm, Some(at));
                slot.sent(true, k.mm, dflags);
            }
        }
        if plain_acquire && slot.keep_acquire(body.mm, flags) {
            return;
        }
        if lock_event {
            slot.sent(acquire, body.mm, flags);
        }
        // Stamped here so that the slot knows it: see `SlotRef::sent_at`.
        // SAFETY: helpers without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        slot.sent_at(now);
        at = Some((now, unsafe { bpf_get_smp_processor_id() }));
    }
    // Default runs: a lock-order rwsem acquisition kept back (locks.rs keep_acquire) goes
    // ahead of anything else the task sends, after its kept mmap_lock acquire (taken before it:
    // an mmap_lock taken under a watched rwsem is never kept).
    if cfg.fold != 0 {
        if let Some(k) = crate::locks::take_kept(pid_tgid as u32) {
            let kflags = if is_new() { k.flags | flag::TASK_NEW } else { k.flags };
            let kept = Body { args: [k.sem, k.class, 0], stack_id: -1, ..Default::default() };
            submit_at(tracer_common::kind::LOCK_ACQUIRE, kflags, &kept, pid_tgid as u32, tgid, comm(), Some((k.ts_ns, k.cpu)));
        }
    }
    if is_new() {
        flags |= flag::TASK_NEW;
    }
    submit_at(kind, flags, body, pid_tgid as u32, tgid, comm(), at);
}

/// Sends an event about another task (the VMA snapshot names the VMA's owner); `tgid` is
/// filtered like the current task's would be.
#[inline(always)]
pub fn emit_for(kind: u16, body: &Body, tid: u32, tgid: u32, comm: [u8; 16]) {
    let Some(cfg) = CONFIG.get(0) else { return };
    if !passes_as(cfg, tgid, || comm) {
        return;
    }
    bump(counter::SEEN_BASE + kind as u32, 1);
    if cfg.send_mask & kind_bit(kind) == 0 {
        return;
    }
    submit(kind, 0, body, tid, tgid, comm);
}

#[inline(always)]
fn submit(kind: u16, flags: u16, body: &Body, tid: u32, tgid: u32, comm: [u8; 16]) {
    submit_at(kind, flags, body, tid, tgid, comm, None)
}

/// [`submit`] with a given timestamp and CPU (an event kept back by crate::fold, or one whose
/// time the fold slot had to know) instead of now.
#[inline(always)]
fn submit_at(kind: u16, flags: u16, body: &Body, tid: u32, tgid: u32, comm: [u8; 16], at: Option<(u64, u32)>) {
    let Some(cfg) = CONFIG.get(0) else { return };
    let epoch_ptr = LOSS_EPOCH.get_ptr_mut(0);
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        bump(counter::LOST, 1);
        bump(counter::LOST_PENDING, 1);
        if let Some(p) = epoch_ptr {
            // SAFETY: a valid, 8-byte aligned map value; other CPUs add to it concurrently, so
            // this must be the BPF atomic add (core has no fetch_add for the BPF target).
            unsafe {
                core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, 1);
            }
        }
        return;
    };
    // Read after the reserve: any loss that happened before our slot was taken is counted.
    let epoch = epoch_ptr.map(|p| unsafe { core::ptr::read_volatile(p) }).unwrap_or(0);
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).ts_ns = match at {
            Some((ts, _)) => ts,
            None => bpf_ktime_get_ns(),
        };
        (*ev).mm = body.mm;
        (*ev).vma = body.vma;
        (*ev).args = body.args;
        (*ev).facts = body.facts;
        (*ev).stack_id = body.stack_id;
        (*ev).tid = tid;
        (*ev).tgid = tgid;
        (*ev).cpu = match at {
            Some((_, cpu)) => cpu,
            None => bpf_get_smp_processor_id(),
        };
        (*ev).lost_before = take_pending_lost();
        (*ev).kind = kind;
        (*ev).flags = flags;
        (*ev).loss_epoch = epoch as u32;
        (*ev).comm = comm;
    }
    // Batched wakeups: the reader polls on a short timer and is only woken early when the
    // ring fills past `wakeup_bytes`.
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= cfg.wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
}
