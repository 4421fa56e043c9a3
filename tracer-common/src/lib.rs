//! Wire types shared by the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and plain old data: the eBPF side writes these bytes into the
//! ring buffer and userspace reads them back, so both sides must agree on the layout to the byte.
//! Changing a layout means bumping [`WIRE_VERSION`].
#![no_std]

/// Bumped whenever a struct below changes layout.
pub const WIRE_VERSION: u32 = 1;

/// Event kinds (`RawEvent::kind`).
pub mod kind {
    /// `trace_mmap_lock_start_locking(mm, write)`: a task starts to take an mmap_lock.
    pub const MMAP_START: u16 = 1;
    /// `trace_mmap_lock_acquire_returned(mm, write, success)`.
    pub const MMAP_ACQUIRED: u16 = 2;
    /// `trace_mmap_lock_released(mm, write)`.
    pub const MMAP_RELEASED: u16 = 3;
    /// `sched_process_exit`: the task (thread) is exiting.
    pub const TASK_EXIT: u16 = 4;
    /// Userspace-only: the kernel skipped hook hits (BPF recursion protection) somewhere
    /// before this point in the stream. Never sent by the eBPF side.
    pub const MISSED: u16 = 5;
    /// One past the largest kind; sizes the per-kind counters.
    pub const COUNT: usize = 6;
}

/// Bits in `RawEvent::flags`.
pub mod flag {
    /// The lock was (or is being) taken for write.
    pub const WRITE: u16 = 1 << 0;
    /// `acquire_returned`: the acquisition succeeded (trylock/killable may fail).
    pub const SUCCESS: u16 = 1 << 1;
    /// The task started after tracing began, so every lock it holds was seen being taken.
    pub const TASK_NEW: u16 = 1 << 2;
}

/// Bits in `Config::send_mask`: which kinds the eBPF side sends to userspace.
/// Kinds no enabled rule needs are dropped in the kernel; `record` sends everything.
pub const fn kind_bit(kind: u16) -> u32 {
    1 << kind
}

/// One event, as the eBPF side writes it to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// The `struct mm_struct *` the event is about (0 when the kind has none).
    pub mm: u64,
    /// Kind-specific payload; unused by the mmap_lock kinds (room for VMA probes).
    pub args: [u64; 2],
    /// Kernel task id (`pid` in kernel terms: one per thread).
    pub tid: u32,
    /// Thread-group id (`tgid`: the process id user space sees).
    pub tgid: u32,
    pub cpu: u32,
    /// Events this CPU failed to put in the ring buffer since its previous event. Carrying the
    /// gap in-band keeps a replay deterministic: the model learns of a loss exactly where it was.
    pub lost_before: u32,
    pub kind: u16,
    pub flags: u16,
    /// How many ring-buffer reserves had failed, on any CPU, when this event was taken. A change
    /// tells userspace that events were lost *before this one*, even when the loss was on
    /// another CPU (a per-CPU marker would arrive too late to protect state in between).
    pub loss_epoch: u32,
    /// `current->comm`, NUL-padded.
    pub comm: [u8; 16],
}

/// The one entry of the `CONFIG` array map: settings userspace changes after the programs are
/// attached. A map rather than a load-time constant because `-c CMD` forks its child only once
/// the probes are live, so the child's TGID (and the moment tracing began) are known only then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// CLOCK_MONOTONIC ns when every probe was attached; a task whose `start_time` is at or after
    /// this was seen from birth (`flag::TASK_NEW`). `u64::MAX` until then.
    pub start_ns: u64,
    /// Only this thread group is traced; [`TGID_ALL`] traces every task, [`TGID_NONE`] none.
    pub tgid: u32,
    /// Which kinds are sent to userspace: a [`kind_bit`] per kind.
    pub send_mask: u32,
    /// Submits wake the reader only once this many bytes are waiting; below that the reader
    /// drains on its own timer. A wakeup per event costs the traced task more than the event.
    pub wakeup_bytes: u64,
}

/// `Config::tgid`: trace every task.
pub const TGID_ALL: u32 = 0;
/// `Config::tgid`: trace nothing yet (the programs are attached but the target is not known).
pub const TGID_NONE: u32 = u32::MAX;

/// Index into the `COUNTERS` per-CPU array.
pub mod counter {
    /// Ring-buffer reserves that failed, in total (per CPU).
    pub const LOST: u32 = 0;
    /// Failed reserves not yet reported in an event's `lost_before` (per CPU).
    pub const LOST_PENDING: u32 = 1;
    /// Hook invocations that passed the TGID filter, indexed by `2 + kind`.
    pub const SEEN_BASE: u32 = 2;
    pub const COUNT: u32 = SEEN_BASE + super::kind::COUNT as u32;
}

/// tp_btf argument position of `write` in the mmap_lock tracepoints, read from the
/// `btf_trace_*` prototypes at load time to pick the matching programs; `success` follows it. 6.14+: `(mm, write,
/// success)`; 6.1–6.13: `(mm, const char *memcg_path, write, success)`.
pub mod tp_btf_args {
    pub const WRITE_AFTER_MM: u32 = 1;
    pub const WRITE_AFTER_MEMCG_PATH: u32 = 2;
}

/// Layouts of the plain `mmap_lock:*` tracepoint records that the fallback programs understand,
/// chosen from the tracepoint's `format` file at load time (the `TP_LAYOUT` global). The record
/// must be read at constant offsets, so each known layout is a branch in the eBPF program.
pub mod tp_layout {
    /// 6.14+: `mm @8, u64 memcg_id @16, bool write @24, bool success @25`.
    pub const MEMCG_ID: u32 = 1;
    /// up to ~6.13: `mm @8, __data_loc char[] memcg_path @16, bool write @20, bool success @21`.
    pub const MEMCG_PATH: u32 = 2;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RawEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_event_layout_is_stable() {
        // The eBPF side and userspace are compiled separately; a silent change here would make
        // every field decode as garbage.
        assert_eq!(core::mem::size_of::<RawEvent>(), 72);
        assert_eq!(core::mem::offset_of!(RawEvent, tid), 32);
        assert_eq!(core::mem::offset_of!(RawEvent, kind), 48);
        assert_eq!(core::mem::offset_of!(RawEvent, comm), 56);
    }
}
