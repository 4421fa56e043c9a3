//! Programs that do nothing: `vmalock probe` loads (and, where harmless, attaches) each to learn
//! which program types and attach kinds this kernel allows, with the exact error when it refuses.

use aya_ebpf::{
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};

#[raw_tracepoint(tracepoint = "mmap_lock_released")]
pub fn cap_raw_tp(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The loader picks the target function by name from BTF (the section name is only a default).
#[fentry(function = "do_exit")]
pub fn cap_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
pub fn cap_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

/// iter/task_vma: aya-ebpf 0.2.1 has no macro for iterators, so name the section by hand.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_vma")]
pub fn cap_iter_task_vma(_ctx: *mut core::ffi::c_void) -> i32 {
    0
}
