//! Task exit: a thread that exits holding an mmap_lock has leaked it (kernel/exit.c do_exit()).
//! sched_process_exit fires once per exiting thread, in that thread's context.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::kind;

use crate::{emit::emit, vma::forget_task};

/// Per-task state on hot paths (fold slots, per-VMA read holds, watched-rwsem counts) sits in
/// arrays of this many slots, task `tid` in slot `tid % TASK_SLOTS`, tagged with its tid. With
/// the default pid_max (32768 below 32 CPUs) no two live tasks share a slot.
pub const TASK_SLOTS: u32 = 32768;

#[btf_tracepoint(function = "sched_process_exit")]
pub fn btf_task_exit(ctx: BtfTracePointContext) -> i32 {
    forget_task();
    emit(&ctx, kind::TASK_EXIT, 0, 0);
    crate::fold::forget();
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn tp_task_exit(ctx: TracePointContext) -> u32 {
    forget_task();
    emit(&ctx, kind::TASK_EXIT, 0, 0);
    crate::fold::forget();
    0
}
