//! Wire types shared by the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and plain old data: the eBPF side writes these bytes into the
//! ring buffer and userspace reads them back, so both sides must agree on the layout to the byte.
//! Changing a layout means bumping [`WIRE_VERSION`].
#![no_std]

/// Bumped whenever a struct below changes layout or kinds are added (3: LOCK_ACQUIRE/RELEASE).
pub const WIRE_VERSION: u32 = 3;

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
    /// `__vma_start_write(vma, …)` entry (6.13+): a VMA is being write-locked. `vma`.
    pub const VMA_WRITE_LOCK: u16 = 6;
    /// A page walk starts (walk_page_range, _mm, walk_page_vma, walk_page_range_vma,
    /// walk_page_mapping): `args[0]` = `ops->walk_lock`, `args[1]` = [`super::site`];
    /// `vma` for the VMA-based entries.
    pub const PAGEWALK: u16 = 7;
    /// The per-VMA step of a walk (`__walk_page_range`, after process_vma_walk_lock):
    /// `vma` = `walk->vma`, `args[0]` = `walk->ops->walk_lock`.
    pub const PAGEWALK_VMA: u16 = 8;
    /// `vma_prepare(vp)` entry: `vma` = `vp->vma`; `args[0]` = [`super::prepare_role`] bits of the
    /// VMAs in `vp` that are not write-locked, `args[1]` = the first such VMA.
    pub const VMA_PREPARE: u16 = 9;
    /// A new VMA was inserted (exit of vma_link / _install_special_mapping): `vma`,
    /// `args[0]` = [`super::site`].
    pub const VMA_NEW: u16 = 10;
    /// A VMA seen by the periodic iter/task_vma snapshot whose state tells something: `vma`,
    /// `args[0]` = vm_start, `args[1]` = [`super::snap`] bits, `args[2]` = the vm_flags bits
    /// that changed since the previous snapshot.
    pub const VMA_SNAPSHOT: u16 = 11;
    /// A VMA modifier (mprotect_fixup, mlock_fixup, mbind_range, madvise_update_vma,
    /// userfaultfd_register_range) returned having changed the
    /// VMA it was handed: `vma`, `args[0]`/`args[1]` = vm_flags before/after, `args[2]` =
    /// [`super::site`] | [`super::snap`] change bits << 16; facts read at the return.
    pub const VMA_MODIFIED: u16 = 12;
    /// A watched rwsem (an address in the `LOCK_CLASS` map: i_mmap_rwsem, anon_vma's root
    /// rwsem) was taken: exit of down_read/down_write and their _killable/_trylock variants.
    /// `args[0]` = the rwsem, `args[1]` = [`super::lock_class`]; flags WRITE, SUCCESS; fact
    /// TRYLOCK for the _trylock variants; `vma` + fact TASK_VMA_READ when the task holds a
    /// per-VMA read lock.
    pub const LOCK_ACQUIRE: u16 = 13;
    /// A watched rwsem was released (up_read/up_write entry): `args[0]`, `args[1]` as above.
    pub const LOCK_RELEASE: u16 = 14;
    /// One past the largest kind; sizes the per-kind counters.
    pub const COUNT: usize = 15;
}

/// Lock classes of [`kind::LOCK_ACQUIRE`] / [`kind::LOCK_RELEASE`] (`args[1]`), learned in the
/// kernel from the objects the VMA probes see. mmap_lock and the VMA lock come from their own
/// events.
pub mod lock_class {
    /// `vma->vm_file->f_mapping->i_mmap_rwsem`.
    pub const I_MMAP_RWSEM: u64 = 1;
    /// `vma->anon_vma->root->rwsem`.
    pub const ANON_VMA: u64 = 2;
    /// `vma->vm_file->f_inode->i_rwsem`.
    pub const I_RWSEM: u64 = 3;
    /// `vma->vm_lock->lock` where vma_start_write is inline (6.4-6.12): its down_write is the
    /// VMA write lock being taken (include/linux/mm.h vma_start_write), sent as VMA_WRITE_LOCK.
    /// Not a lock-order class of its own: the write lock is taken and dropped at once.
    pub const VMA_WRITE: u64 = 4;
}

/// `enum page_walk_lock` (include/linux/pagewalk.h) as a page-walk event carries it
/// (`RawEvent::args[0]`); u64::MAX where the kernel's mm_walk_ops has no walk_lock (before 6.5).
/// The loader checks this kernel's BTF enumerators against these before attaching walk hooks.
pub mod walk_lock {
    pub const RDLOCK: u64 = 0;
    pub const WRLOCK: u64 = 1;
    pub const WRLOCK_VERIFY: u64 = 2;
    pub const VMA_RDLOCK_VERIFY: u64 = 3;
}

/// Which function a page walk or new-VMA event came from (`RawEvent::args[1]` of PAGEWALK,
/// `args[0]` of VMA_NEW).
pub mod site {
    pub const WALK_PAGE_RANGE: u64 = 1;
    pub const WALK_PAGE_RANGE_MM: u64 = 2;
    pub const WALK_PAGE_VMA: u64 = 3;
    pub const WALK_PAGE_RANGE_VMA: u64 = 4;
    pub const WALK_PAGE_MAPPING: u64 = 5;
    pub const WALK_PAGE_RANGE_MM_UNSAFE: u64 = 6;
    pub const WALK_PAGE_RANGE_VMA_UNSAFE: u64 = 7;
    pub const VMA_LINK: u64 = 16;
    pub const INSTALL_SPECIAL_MAPPING: u64 = 17;
    /// `ksm_add_vma` entry: mmap_region and do_brk_flags call it on the VMA they just stored.
    pub const KSM_ADD_VMA: u64 = 18;
    pub const MPROTECT_FIXUP: u64 = 32;
    pub const MLOCK_FIXUP: u64 = 33;
    pub const MBIND_RANGE: u64 = 34;
    pub const MADVISE_UPDATE_VMA: u64 = 35;
    pub const USERFAULTFD_REGISTER_RANGE: u64 = 36;
}

/// `RawEvent::args[0]` bits of VMA_PREPARE: which member of `struct vma_prepare` is not
/// write-locked.
pub mod prepare_role {
    pub const VMA: u64 = 1 << 0;
    pub const ADJ_NEXT: u64 = 1 << 1;
    pub const REMOVE: u64 = 1 << 2;
    pub const REMOVE2: u64 = 1 << 3;
}

/// Lock state read from kernel memory at the hook (`RawEvent::facts`). A fact is only
/// meaningful when its `*_KNOWN` bit is set: a layout the loader could not resolve from BTF, or
/// a failed read, leaves it unknown, and the model then does not judge on it.
pub mod fact {
    /// `mm->mmap_lock` (an rw_semaphore) was read.
    pub const MMAP_KNOWN: u32 = 1 << 0;
    /// Its count is non-zero: some task holds it, for read or write.
    pub const MMAP_LOCKED: u32 = 1 << 1;
    /// RWSEM_WRITER_LOCKED is set: some task holds it for write.
    pub const MMAP_WRITE_LOCKED: u32 = 1 << 2;
    /// ... and its owner is the current task.
    pub const MMAP_WRITER_IS_CURRENT: u32 = 1 << 3;
    /// The VMA's `vm_lock_seq` and its mm's `mm_lock_seq` were read.
    pub const VMA_KNOWN: u32 = 1 << 4;
    /// `vma->vm_lock_seq == mm->mm_lock_seq`: the VMA is write-locked (or was write-locked
    /// outside an mmap write section and never released).
    pub const VMA_WRITE_LOCKED: u32 = 1 << 5;
    /// `vm_lock_seq == UINT_MAX`: never write-locked since it was allocated.
    pub const VMA_SEQ_UNSET: u32 = 1 << 6;
    /// `mm_lock_seq` is odd (seqcount kernels, 6.12 Debian and 6.13+): an mmap write section is
    /// open in this mm.
    pub const MM_SEQ_ODD: u32 = 1 << 7;
    /// `mm_lock_seq` is a seqcount (parity is meaningful) on this kernel.
    pub const MM_SEQCOUNT: u32 = 1 << 8;
    /// Readers hold the VMA (vm_refcnt above its attached value, 6.15+; vm_lock rwsem count
    /// on older kernels).
    pub const VMA_READ_LOCKED: u32 = 1 << 9;
    pub const VMA_READ_KNOWN: u32 = 1 << 10;
    /// The current task holds a per-VMA read lock (lock_vma_under_rcu returned and was not
    /// released yet); `vma` names it on MMAP_START.
    pub const TASK_VMA_READ: u32 = 1 << 11;
    /// On an mmap_lock acquire under a per-VMA read lock: the attempt was a trylock
    /// (down_read_trylock/down_write_trylock on this mm's mmap_lock ran since the start), which
    /// cannot deadlock: mmap_read_trylock traces start_locking too, so only this tells them apart.
    pub const TRYLOCK: u32 = 1 << 12;
}

/// `RawEvent::args[1]` bits of VMA_SNAPSHOT: what changed since this VMA's previous snapshot.
pub mod snap {
    /// First time this VMA (pointer, range) is seen.
    pub const NEW: u64 = 1 << 0;
    pub const FLAGS_CHANGED: u64 = 1 << 1;
    pub const PAGE_PROT_CHANGED: u64 = 1 << 2;
    pub const UFFD_CHANGED: u64 = 1 << 3;
    pub const POLICY_CHANGED: u64 = 1 << 4;
    /// vm_lock_seq moved since the previous snapshot.
    pub const LOCK_SEQ_MOVED: u64 = 1 << 5;
    /// The mm existed at the previous snapshot (a VMA new to an mm seen before was inserted
    /// by this mm's own code, not copied by fork).
    pub const MM_SEEN_BEFORE: u64 = 1 << 6;
}

/// Bits in `RawEvent::flags`.
pub mod flag {
    /// The lock was (or is being) taken for write.
    pub const WRITE: u16 = 1 << 0;
    /// `acquire_returned`: the acquisition succeeded (trylock/killable may fail).
    pub const SUCCESS: u16 = 1 << 1;
    /// The task started after tracing began, so every lock it holds was seen being taken.
    pub const TASK_NEW: u16 = 1 << 2;
    /// `ts_ns` is at most one kernel tick early, and never before the task's previous event: a
    /// default run's kept acquire, sent later (see tracer-ebpf's fold.rs).
    pub const TS_COARSE: u16 = 1 << 3;
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
    /// The `struct vm_area_struct *` the event is about (0 when the kind has none).
    pub vma: u64,
    /// Kind-specific payload (see [`kind`]).
    pub args: [u64; 3],
    /// Lock state read at the hook ([`fact`] bits).
    pub facts: u32,
    /// Kernel stack id in the `STACKS` map, or negative when none was taken.
    pub stack_id: i32,
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
    /// Non-zero: balanced mmap_lock acquire/release pairs with nothing sent between them stay in
    /// the kernel (default runs; `record` and `--all-events` send every event).
    pub fold: u32,
    /// Which per-task lookups the mmap_lock hooks make ([`watch`] bits): set only when the
    /// hooks that fill those maps are attached, so a kernel without them pays nothing.
    pub watch: u32,
    /// Non-zero: only tasks whose `comm` is [`Config::comm`] are traced (`--comm`), on top of
    /// the TGID filter. Zero costs the hooks one load and branch.
    pub comm_filter: u32,
    /// Bumped by the daemon as soon as it reads a new count of hook hits the kernel skipped
    /// (recursion protection), before it drains the ring: a per-VMA read hold taken in an
    /// older epoch may have outlived its unseen end, and is not believed any more.
    pub hold_epoch: u32,
    /// The `comm` (NUL-padded, at most 15 bytes) `comm_filter` asks for.
    pub comm: [u8; 16],
}

/// `Config::watch` bits.
pub mod watch {
    /// lock-order's rwsem hooks are attached: an mmap_lock attempt checks for a watched rwsem.
    pub const LOCKS: u32 = 1 << 0;
    /// The per-VMA read-lock hooks are attached: an mmap_lock attempt checks for a VMA read hold.
    pub const VMA_READ: u32 = 1 << 1;
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
    /// Per-VMA read locks taken (lock_vma_under_rcu returned a VMA), aggregated in the kernel:
    /// the page-fault path is too hot for an event each.
    pub const VMA_READ_TAKEN: u32 = 2;
    /// Per-VMA read locks released (vma_refcount_put, or the end of handle_mm_fault where
    /// vma_end_read is inline).
    pub const VMA_READ_DROPPED: u32 = 3;
    /// VMAs of traced processes the snapshot compared with their previous state.
    pub const SNAP_VISITED: u32 = 4;
    /// mmap_lock acquire/release pairs folded in the kernel: balanced, nothing sent between.
    pub const FOLDED_PAIRS: u32 = 5;
    /// VMA events whose facts already showed them legal, kept in the kernel (default runs).
    pub const LEGAL_KEPT: u32 = 6;
    /// Reads of the current task's start_time that failed (a wrong BTF offset): those events
    /// are not marked TASK_NEW. The daemon warns when it is not zero.
    pub const START_TIME_UNREADABLE: u32 = 7;
    /// Acquire/release pairs of lock-order rwsems folded in the kernel: an acquisition along a
    /// lock chain sent within the last second, released with nothing sent in between.
    pub const LOCK_PAIRS_FOLDED: u32 = 8;
    /// Hook invocations that passed the TGID filter, indexed by `SEEN_BASE + kind`.
    pub const SEEN_BASE: u32 = 9;
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

/// Kernel struct layouts, resolved by name from the running kernel's BTF by the loader and
/// handed to the eBPF programs as one load-time global (`LAYOUT`). A layout group whose members
/// are not all found has its `known` bit clear and the programs do not read it: the facts it
/// would give stay unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// [`layout`] bits.
    pub known: u32,
    /// `task_struct.pid` and `.tgid` (snapshots name the VMA's owner, not the iterating task).
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `task_struct.mm`: the snapshot skips VMAs not of the task's own mm (during fork the
    /// child's tree briefly holds the parent's VMAs).
    pub task_mm: u32,
    /// vm_flags bits the kernel may legally change without the VMA write lock on this kernel
    /// (VM_ATOMIC_SET_ALLOWED, 7.x): snapshots do not count them as changes.
    pub vma_unlocked_flags: u64,
    /// `mm_struct.mmap_lock` + `rw_semaphore.count` / `.owner`.
    pub mm_mmap_lock: u32,
    pub rwsem_count: u32,
    pub rwsem_owner: u32,
    /// `mm_struct.mm_lock_seq` (`.sequence` inside it when it is a seqcount).
    pub mm_lock_seq: u32,
    pub vma_mm: u32,
    pub vma_start: u32,
    pub vma_end: u32,
    pub vma_lock_seq: u32,
    /// `vm_area_struct.vm_refcnt` (6.15+).
    pub vma_refcnt: u32,
    /// `vm_area_struct.vm_lock` (a `struct vma_lock *`, 6.4-6.14) and the rwsem inside it.
    pub vma_vm_lock: u32,
    pub vma_lock_rwsem: u32,
    pub vma_flags: u32,
    pub vma_page_prot: u32,
    pub vma_uffd_ctx: u32,
    pub vma_policy: u32,
    /// `mm_walk_ops.walk_lock`; `mm_walk.ops`, `.mm`, `.vma`.
    pub ops_walk_lock: u32,
    pub walk_ops: u32,
    pub walk_mm: u32,
    pub walk_vma: u32,
    /// `vma_prepare.vma`, `.adj_next`, `.remove`, `.remove2`.
    pub vp_vma: u32,
    pub vp_adj_next: u32,
    pub vp_remove: u32,
    pub vp_remove2: u32,
    /// The rwsems lock-order watches, reached from a VMA: `vm_area_struct.vm_file`,
    /// `file.f_mapping`, `address_space.i_mmap_rwsem`, `file.f_inode`, `inode.i_rwsem`.
    pub vma_file: u32,
    pub file_mapping: u32,
    pub mapping_i_mmap_rwsem: u32,
    pub file_inode: u32,
    pub inode_i_rwsem: u32,
    /// `vm_area_struct.anon_vma`, `anon_vma.root`, `anon_vma.rwsem` (anon_vma_lock_write locks
    /// the root's).
    pub vma_anon_vma: u32,
    pub anon_vma_root: u32,
    pub anon_vma_rwsem: u32,
    /// `madvise_behavior.vma` (6.16+: madvise_update_vma takes the VMA inside this struct, and
    /// leaves there the VMA that vma_modify returned).
    pub madv_vma: u32,
}

/// Bits in `Layout::known`.
pub mod layout {
    pub const TASK: u32 = 1 << 0;
    pub const MMAP_RWSEM: u32 = 1 << 1;
    /// vm_lock_seq and mm_lock_seq: the kernel has per-VMA locks.
    pub const VMA_SEQ: u32 = 1 << 2;
    /// mm_lock_seq is a seqcount: odd inside an mmap write section.
    pub const MM_SEQCOUNT: u32 = 1 << 3;
    pub const VMA_REFCNT: u32 = 1 << 4;
    pub const VMA_VM_LOCK: u32 = 1 << 5;
    pub const VMA_BASICS: u32 = 1 << 6;
    pub const VMA_PAGE_PROT: u32 = 1 << 7;
    pub const VMA_UFFD: u32 = 1 << 8;
    pub const VMA_POLICY: u32 = 1 << 9;
    /// mm_walk_ops has walk_lock (6.5+).
    pub const WALK: u32 = 1 << 10;
    pub const VMA_PREPARE: u32 = 1 << 11;
    /// vm_file → f_mapping → i_mmap_rwsem, f_inode → i_rwsem.
    pub const LOCK_FILE: u32 = 1 << 12;
    /// anon_vma → root → rwsem.
    pub const LOCK_ANON: u32 = 1 << 13;
    /// struct madvise_behavior's vma.
    pub const MADV_BEHAVIOR: u32 = 1 << 14;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Layout {}
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
        assert_eq!(core::mem::size_of::<RawEvent>(), 96);
        assert_eq!(core::mem::offset_of!(RawEvent, facts), 48);
        assert_eq!(core::mem::offset_of!(RawEvent, tid), 56);
        assert_eq!(core::mem::offset_of!(RawEvent, kind), 72);
        assert_eq!(core::mem::offset_of!(RawEvent, comm), 80);
    }
}
