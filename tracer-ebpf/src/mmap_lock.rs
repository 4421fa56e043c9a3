//! The three mmap_lock tracepoints (include/trace/events/mmap_lock.h), as tp_btf programs and as
//! plain-tracepoint fallbacks; userspace attaches whichever family the kernel accepts.

use aya_ebpf::{
    EbpfContext, Global,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext, tracing::StackIdContext},
};
use tracer_common::{fact, flag, kind, tp_layout, watch};

use crate::{
    emit::{Body, emit, emit_body, emit_body_needed, stack_id},
    kernel::layout,
    vma::{took_trylock, trusted_vma_read},
};

/// Non-zero when the per-VMA read-lock probes exist on this kernel (set by the loader): only
/// then is the per-task VMA read lock looked up on this hot path.
#[unsafe(no_mangle)]
static TRACK_VMA_READ: Global<u32> = Global::new(0);

/// An mmap_lock attempt (start, or the acquire of a trylock that has no start): carries the
/// per-VMA read lock the task holds, if any, with the stack that proves it.
#[inline(always)]
fn emit_attempt<C: EbpfContext + StackIdContext>(ctx: &C, kind: u16, mm: u64, flags: u16) {
    let watch = crate::emit::watching();
    let held = if TRACK_VMA_READ.load() != 0 && watch & watch::VMA_READ != 0 { trusted_vma_read(ctx) } else { None };
    match held {
        Some(vma) => {
            let mut facts = fact::TASK_VMA_READ;
            // Between start_locking and acquire_returned the lock itself runs: a trylock shows
            // as down_*_trylock on this mm's mmap_lock.
            if kind == tracer_common::kind::MMAP_ACQUIRED && took_trylock(mm + layout().mm_mmap_lock as u64) {
                facts |= fact::TRYLOCK;
            }
            let body = Body { mm, vma, facts, stack_id: stack_id(ctx), ..Default::default() };
            emit_body(ctx, kind, flags, &body);
        }
        // Under a watched rwsem (lock-order): the stack of the mmap_lock side of the edge.
        None if watch & watch::LOCKS != 0 && crate::locks::holds_watched() => {
            let body = Body { mm, stack_id: stack_id(ctx), ..Default::default() };
            emit_body_needed(ctx, kind, flags, &body);
        }
        None => emit(ctx, kind, mm, flags),
    }
}

/// Which plain-tracepoint record layout this kernel has (`tp_layout::*`), read by the loader from
/// the tracepoint's `format` file; 0 when unknown, and then the fallback is not attached.
#[unsafe(no_mangle)]
static TP_LAYOUT: Global<u32> = Global::new(0);

#[inline(always)]
fn flags(write: bool, success: bool) -> u16 {
    (if write { flag::WRITE } else { 0 }) | (if success { flag::SUCCESS } else { 0 })
}

// tp_btf: the raw tracepoint arguments, typed by BTF; `mm` is always the first. Where `write`
// sits depends on the kernel (6.1-6.13 pass `const char *memcg_path` before it), and ctx loads
// must be at constant offsets, so each prototype has its own program (`W` is the index of
// `write`; `success` follows it) and the loader attaches the one that matches this kernel's BTF.
// A bool arrives as a u64 slot: mask it.

#[inline(always)]
fn on_start<const W: usize>(ctx: &BtfTracePointContext) {
    let mm: u64 = ctx.arg(0);
    let write: u64 = ctx.arg(W);
    emit_attempt(ctx, kind::MMAP_START, mm, flags(write & 0xff != 0, false));
}

#[inline(always)]
fn on_acquired<const W: usize, const S: usize>(ctx: &BtfTracePointContext) {
    let mm: u64 = ctx.arg(0);
    let write: u64 = ctx.arg(W);
    let success: u64 = ctx.arg(S);
    emit_attempt(ctx, kind::MMAP_ACQUIRED, mm, flags(write & 0xff != 0, success & 0xff != 0));
}

#[inline(always)]
fn on_released<const W: usize>(ctx: &BtfTracePointContext) {
    let mm: u64 = ctx.arg(0);
    let write: u64 = ctx.arg(W);
    emit(ctx, kind::MMAP_RELEASED, mm, flags(write & 0xff != 0, false));
}

/// 6.14+: `(mm, write)`.
#[btf_tracepoint(function = "mmap_lock_start_locking")]
pub fn btf_mmap_start(ctx: BtfTracePointContext) -> i32 {
    on_start::<1>(&ctx);
    0
}

/// 6.14+: `(mm, write, success)`.
#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn btf_mmap_acquired(ctx: BtfTracePointContext) -> i32 {
    on_acquired::<1, 2>(&ctx);
    0
}

#[btf_tracepoint(function = "mmap_lock_released")]
pub fn btf_mmap_released(ctx: BtfTracePointContext) -> i32 {
    on_released::<1>(&ctx);
    0
}

/// 6.1-6.13: `(mm, memcg_path, write)`.
#[btf_tracepoint(function = "mmap_lock_start_locking")]
pub fn btf_mmap_start_memcg(ctx: BtfTracePointContext) -> i32 {
    on_start::<2>(&ctx);
    0
}

/// 6.1-6.13: `(mm, memcg_path, write, success)`.
#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn btf_mmap_acquired_memcg(ctx: BtfTracePointContext) -> i32 {
    on_acquired::<2, 3>(&ctx);
    0
}

#[btf_tracepoint(function = "mmap_lock_released")]
pub fn btf_mmap_released_memcg(ctx: BtfTracePointContext) -> i32 {
    on_released::<2>(&ctx);
    0
}

// Plain tracepoints: the record must be read at constant offsets, so each known layout is its
// own branch. Returns (mm, write, success).
#[inline(always)]
fn read_record(ctx: &TracePointContext) -> Option<(u64, bool, bool)> {
    let mm: u64 = unsafe { ctx.read_at(8) }.ok()?;
    let (write, success): (u8, u8) = match TP_LAYOUT.load() {
        tp_layout::MEMCG_ID => unsafe { (ctx.read_at(24).ok()?, ctx.read_at(25).ok()?) },
        tp_layout::MEMCG_PATH => unsafe { (ctx.read_at(20).ok()?, ctx.read_at(21).ok()?) },
        _ => return None,
    };
    Some((mm, write != 0, success != 0))
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_start_locking")]
pub fn tp_mmap_start(ctx: TracePointContext) -> u32 {
    if let Some((mm, write, _)) = read_record(&ctx) {
        emit_attempt(&ctx, kind::MMAP_START, mm, flags(write, false));
    }
    0
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_acquire_returned")]
pub fn tp_mmap_acquired(ctx: TracePointContext) -> u32 {
    if let Some((mm, write, success)) = read_record(&ctx) {
        emit_attempt(&ctx, kind::MMAP_ACQUIRED, mm, flags(write, success));
    }
    0
}

#[tracepoint(category = "mmap_lock", name = "mmap_lock_released")]
pub fn tp_mmap_released(ctx: TracePointContext) -> u32 {
    // `success` is not in this record; reading it would pass the record's end on MEMCG_PATH.
    if let Some((mm, write, _)) = read_record(&ctx) {
        emit(&ctx, kind::MMAP_RELEASED, mm, flags(write, false));
    }
    0
}
