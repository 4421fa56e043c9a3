//! VMA snapshots (iter/task_vma): userspace reads the iterator every period; for each VMA this
//! program compares the fields the VMA write lock protects with the previous snapshot, kept
//! here per VMA, and sends only VMAs whose state tells something:
//! - vm_flags / vm_page_prot / vm_userfaultfd_ctx / vm_policy changed while vm_lock_seq did not
//!   move (nobody write-locked the VMA in between);
//! - vm_lock_seq == mm_lock_seq while the iterator holds the mmap_lock for read: a write lock
//!   taken outside an mmap write section (vma_end_write_all never released it);
//! - a VMA new to an mm seen before that was never write-locked (vm_lock_seq == UINT_MAX).
//! Works on any kernel with BPF iterators, this machine's included: no trampolines needed.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::map, maps::{Array, LruHashMap}};
use tracer_common::{counter, fact, kind, layout, snap};

use crate::{
    emit::{Body, count, emit_for, traced_tgid},
    kernel::{layout, mmap_facts, read, vma_facts},
};

#[derive(Clone, Copy)]
#[repr(C)]
struct Seen {
    mm: u64,
    start: u64,
    end: u64,
    flags: u64,
    prot: u64,
    uffd: u64,
    policy: u64,
    lock_seq: u32,
    _pad: u32,
}

/// Previous snapshot per VMA pointer.
#[map]
static SNAP_SEEN: LruHashMap<u64, Seen> = LruHashMap::with_max_entries(131072, 0);

/// mm → the snapshot round it was first seen in.
#[map]
static SNAP_MMS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// The current round, written by userspace before each read of the iterator.
#[map]
static SNAP_ROUND: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn ctx_ptr(ctx: *mut core::ffi::c_void, slot: usize) -> u64 {
    // struct bpf_iter__task_vma { meta; task; vma; }: three 8-byte pointer slots. Read as plain
    // numbers (see vma::ctx_slot).
    unsafe { bpf_probe_read_kernel((ctx as *const u64).wrapping_add(slot)) }.unwrap_or(0)
}

#[inline(always)]
fn opt(l_known: u32, bit: u32, base: u64, off: u32) -> u64 {
    if l_known & bit == 0 {
        return 0;
    }
    read::<u64>(base, off).unwrap_or(0)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_vma")]
pub fn snapshot_task_vma(ctx: *mut core::ffi::c_void) -> i32 {
    let task = ctx_ptr(ctx, 1);
    let vma = ctx_ptr(ctx, 2);
    if task == 0 || vma == 0 {
        return 0;
    }
    let l = layout();
    if l.known & layout::TASK == 0 || l.known & layout::VMA_BASICS == 0 {
        return 0;
    }
    let (Some(tid), Some(tgid)) = (read::<u32>(task, l.task_pid), read::<u32>(task, l.task_tgid)) else {
        return 0;
    };
    if tid != tgid {
        return 0; // threads share the leader's mm: one pass per process
    }
    if !traced_tgid(tgid) {
        // Under -p/-c nothing of another process is sent or learned: skip its VMAs before any
        // map work (the iterator still visits them; this makes each visit a few reads).
        return 0;
    }
    let mm = read::<u64>(vma, l.vma_mm).unwrap_or(0);
    if mm == 0 || read::<u64>(task, l.task_mm) != Some(mm) {
        return 0; // dup_mmap: the child's tree still holds the parent's VMAs
    }
    let now = Seen {
        mm,
        start: read::<u64>(vma, l.vma_start).unwrap_or(0),
        end: read::<u64>(vma, l.vma_end).unwrap_or(0),
        flags: read::<u64>(vma, l.vma_flags).unwrap_or(0),
        prot: opt(l.known, layout::VMA_PAGE_PROT, vma, l.vma_page_prot),
        uffd: opt(l.known, layout::VMA_UFFD, vma, l.vma_uffd_ctx),
        policy: opt(l.known, layout::VMA_POLICY, vma, l.vma_policy),
        lock_seq: if l.known & layout::VMA_SEQ != 0 { read::<u32>(vma, l.vma_lock_seq).unwrap_or(0) } else { 0 },
        _pad: 0,
    };
    let round = SNAP_ROUND.get(0).copied().unwrap_or(0);
    let mut bits = 0u64;
    match unsafe { SNAP_MMS.get(&mm) } {
        Some(first) if *first < round => bits |= snap::MM_SEEN_BEFORE,
        Some(_) => {}
        None => {
            let _ = SNAP_MMS.insert(&mm, &round, 0);
        }
    }
    let mut flags_xor = 0;
    match unsafe { SNAP_SEEN.get(&vma) } {
        Some(prev) if prev.mm == mm && prev.start == now.start && prev.end == now.end => {
            flags_xor = (prev.flags ^ now.flags) & !l.vma_unlocked_flags;
            if flags_xor != 0 {
                bits |= snap::FLAGS_CHANGED;
            }
            if prev.prot != now.prot {
                bits |= snap::PAGE_PROT_CHANGED;
            }
            if prev.uffd != now.uffd {
                bits |= snap::UFFD_CHANGED;
            }
            if prev.policy != now.policy {
                bits |= snap::POLICY_CHANGED;
            }
            if prev.lock_seq != now.lock_seq {
                bits |= snap::LOCK_SEQ_MOVED;
            }
        }
        _ => bits |= snap::NEW,
    }
    let _ = SNAP_SEEN.insert(&vma, &now, 0);
    count(counter::SNAP_VISITED);
    // Lock-order classes of VMAs no hook has shown (6.12 maps files without vma_link or
    // __vma_start_write: a file VMA never faulted is otherwise never learned).
    crate::locks::learn(vma);
    let facts = mmap_facts(&l, mm) | vma_facts(&l, mm, vma);
    let changed = snap::FLAGS_CHANGED | snap::PAGE_PROT_CHANGED | snap::UFFD_CHANGED | snap::POLICY_CHANGED;
    // A stale write lock is told once: when first seen, or when vm_lock_seq moved onto it.
    let tells = bits & changed != 0
        || (facts & fact::VMA_WRITE_LOCKED != 0 && bits & (snap::NEW | snap::LOCK_SEQ_MOVED) != 0)
        || (bits & snap::NEW != 0 && bits & snap::MM_SEEN_BEFORE != 0 && facts & fact::VMA_SEQ_UNSET != 0);
    if !tells {
        return 0;
    }
    let comm = read::<[u8; 16]>(task, l.task_comm).unwrap_or([0; 16]);
    let body = Body { mm, vma, args: [now.start, bits, flags_xor], facts, stack_id: -1 };
    emit_for(kind::VMA_SNAPSHOT, &body, tid, tgid, comm);
    0
}
