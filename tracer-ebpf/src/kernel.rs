//! Reading kernel memory at a hook: the lock state a rule needs, at offsets the loader resolved
//! from this kernel's BTF (`LAYOUT`). Every read is a bpf_probe_read_kernel, so a stale or
//! freed pointer gives an unknown fact, never a fault.

use aya_ebpf::{Global, helpers::{bpf_get_current_task, bpf_probe_read_kernel}};
use tracer_common::{Layout, fact, layout};

#[unsafe(no_mangle)]
pub static LAYOUT: Global<Layout> = Global::new(Layout {
    known: 0,
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    task_mm: 0,
    vma_unlocked_flags: 0,
    mm_mmap_lock: 0,
    rwsem_count: 0,
    rwsem_owner: 0,
    mm_lock_seq: 0,
    vma_mm: 0,
    vma_start: 0,
    vma_end: 0,
    vma_lock_seq: 0,
    vma_refcnt: 0,
    vma_vm_lock: 0,
    vma_lock_rwsem: 0,
    vma_flags: 0,
    vma_page_prot: 0,
    vma_uffd_ctx: 0,
    vma_policy: 0,
    ops_walk_lock: 0,
    walk_ops: 0,
    walk_mm: 0,
    walk_vma: 0,
    vp_vma: 0,
    vp_adj_next: 0,
    vp_remove: 0,
    vp_remove2: 0,
    vma_file: 0,
    file_mapping: 0,
    mapping_i_mmap_rwsem: 0,
    file_inode: 0,
    inode_i_rwsem: 0,
    vma_anon_vma: 0,
    anon_vma_root: 0,
    anon_vma_rwsem: 0,
    madv_vma: 0,
});

/// `include/linux/rwsem.h` / kernel/locking/rwsem.c: bit 0 of `count` is RWSEM_WRITER_LOCKED;
/// the low bits of `owner` are flags (RWSEM_READER_OWNED, RWSEM_NONSPINNABLE), the rest is the
/// writer's task_struct.
const RWSEM_WRITER_LOCKED: u64 = 1;
const RWSEM_OWNER_FLAGS_MASK: u64 = 7;
/// vma_lock_init / vma_lock_alloc: a VMA never write-locked has vm_lock_seq == UINT_MAX.
const SEQ_UNSET: u32 = u32::MAX;

#[inline(always)]
pub fn layout() -> Layout {
    LAYOUT.load()
}

#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// Two u64 fields of one object at offsets `a` and `b`: one probe read when they lie within
/// 32 bytes of each other (an rwsem's count and owner, a VMA's anon_vma and vm_file), where
/// the helper call costs more under TCG than the bytes. Reads no byte outside the two fields'
/// span, so it fails only where one of the two reads could.
#[inline(always)]
pub fn read_two(base: u64, a: u32, b: u32) -> (Option<u64>, Option<u64>) {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let near = match hi - lo {
        8 => read::<[u64; 2]>(base, lo).map(|w| (w[0], w[1])),
        16 => read::<[u64; 3]>(base, lo).map(|w| (w[0], w[2])),
        24 => read::<[u64; 4]>(base, lo).map(|w| (w[0], w[3])),
        _ => return (read(base, a), read(base, b)),
    };
    match near {
        Some((first, last)) if a <= b => (Some(first), Some(last)),
        Some((first, last)) => (Some(last), Some(first)),
        None => (None, None),
    }
}

/// Two u64 fields of `base`, each as (layout bit, offset), 0 where the layout lacks it or the
/// read fails: through [`read_two`] where both are known. A VMA modifier reads four fields at
/// entry and four at return, and lock-class learning a VMA's file and anon_vma.
#[inline(always)]
pub fn read_known_two(l: &Layout, base: u64, a: (u32, u32), b: (u32, u32)) -> (u64, u64) {
    match (l.known & a.0 != 0, l.known & b.0 != 0) {
        (true, true) => {
            let (x, y) = read_two(base, a.1, b.1);
            (x.unwrap_or(0), y.unwrap_or(0))
        }
        (true, false) => (read::<u64>(base, a.1).unwrap_or(0), 0),
        (false, true) => (0, read::<u64>(base, b.1).unwrap_or(0)),
        (false, false) => (0, 0),
    }
}

/// State of `mm->mmap_lock` as the current task sees it.
#[inline(always)]
pub fn mmap_facts(l: &Layout, mm: u64) -> u32 {
    if l.known & layout::MMAP_RWSEM == 0 {
        return 0;
    }
    let sem = mm + l.mm_mmap_lock as u64;
    let (Some(count), Some(owner)) = read_two(sem, l.rwsem_count, l.rwsem_owner) else {
        return 0;
    };
    let mut f = fact::MMAP_KNOWN;
    if count != 0 {
        f |= fact::MMAP_LOCKED;
    }
    if count & RWSEM_WRITER_LOCKED != 0 {
        f |= fact::MMAP_WRITE_LOCKED;
        let current = unsafe { bpf_get_current_task() };
        if owner & !RWSEM_OWNER_FLAGS_MASK == current {
            f |= fact::MMAP_WRITER_IS_CURRENT;
        }
    }
    f
}

/// `vma->vm_mm`, or 0.
#[inline(always)]
pub fn vma_mm(l: &Layout, vma: u64) -> u64 {
    if l.known & layout::VMA_BASICS == 0 {
        return 0;
    }
    read::<u64>(vma, l.vma_mm).unwrap_or(0)
}

/// `mm->mm_lock_seq(.sequence)`, where the layout has it.
#[inline(always)]
pub fn mm_lock_seq(l: &Layout, mm: u64) -> Option<u32> {
    if l.known & layout::VMA_SEQ == 0 {
        return None;
    }
    read::<u32>(mm, l.mm_lock_seq)
}

/// Whether `vma` is write-locked, given its mm's `mm_lock_seq` (read once for several VMAs of
/// one mm): what [`vma_facts`] says with VMA_KNOWN and VMA_WRITE_LOCKED, without the reader
/// count's read. None where that is unknown.
#[inline(always)]
pub fn vma_write_locked(l: &Layout, mm_seq: Option<u32>, vma: u64) -> Option<bool> {
    let mseq = mm_seq?;
    read::<u32>(vma, l.vma_lock_seq).map(|vseq| vseq == mseq)
}

/// Write-lock state of `vma` in `mm` (include/linux/mmap_lock.h __is_vma_write_locked:
/// `vma->vm_lock_seq == mm->mm_lock_seq.sequence`), and its readers where the layout shows them.
#[inline(always)]
pub fn vma_facts(l: &Layout, mm: u64, vma: u64) -> u32 {
    if l.known & layout::VMA_SEQ == 0 {
        return 0;
    }
    let (Some(vseq), Some(mseq)) = (read::<u32>(vma, l.vma_lock_seq), read::<u32>(mm, l.mm_lock_seq)) else {
        return 0;
    };
    let mut f = fact::VMA_KNOWN;
    if vseq == mseq {
        f |= fact::VMA_WRITE_LOCKED;
    }
    if vseq == SEQ_UNSET {
        f |= fact::VMA_SEQ_UNSET;
    }
    if l.known & layout::MM_SEQCOUNT != 0 {
        f |= fact::MM_SEQCOUNT;
        if mseq & 1 != 0 {
            f |= fact::MM_SEQ_ODD;
        }
    }
    if l.known & layout::VMA_REFCNT != 0 {
        // 6.15+ vma_assert_locked(): readers raise vm_refcnt above 1 (attached); a writer adds
        // VMA_LOCK_OFFSET, which vm_lock_seq already reports.
        if let Some(refcnt) = read::<u32>(vma, l.vma_refcnt) {
            f |= fact::VMA_READ_KNOWN;
            if refcnt > 1 && f & fact::VMA_WRITE_LOCKED == 0 {
                f |= fact::VMA_READ_LOCKED;
            }
        }
    } else if l.known & layout::VMA_VM_LOCK != 0 {
        // 6.4-6.14: readers hold vma->vm_lock->lock (an rw_semaphore) for read.
        if let Some(lock) = read::<u64>(vma, l.vma_vm_lock) {
            if let Some(count) = read::<u64>(lock + l.vma_lock_rwsem as u64, l.rwsem_count) {
                f |= fact::VMA_READ_KNOWN;
                if count != 0 && count & RWSEM_WRITER_LOCKED == 0 {
                    f |= fact::VMA_READ_LOCKED;
                }
            }
        }
    }
    f
}

/// 6.15+: `vm_refcnt` counts 1 for "attached" plus one per reader; bit 30
/// (VM_REFCNT_EXCLUDE_READERS_FLAG, VMA_LOCK_OFFSET before 7.x) marks a writer excluding them.
const REFCNT_READERS_MASK: u32 = (1 << 30) - 1;
/// kernel/locking/rwsem.c: readers are counted from bit 8 of `count` (RWSEM_READER_SHIFT).
const RWSEM_READER_SHIFT: u32 = 8;

/// How many readers hold `vma`'s per-VMA lock now (possibly plus a transient reference), or
/// None where this kernel's layout does not show it.
#[inline(always)]
pub fn vma_readers(l: &Layout, vma: u64) -> Option<u32> {
    if l.known & layout::VMA_REFCNT != 0 {
        let refcnt = read::<u32>(vma, l.vma_refcnt)?;
        Some((refcnt & REFCNT_READERS_MASK).saturating_sub(1))
    } else if l.known & layout::VMA_VM_LOCK != 0 {
        let lock = read::<u64>(vma, l.vma_vm_lock)?;
        let count = read::<u64>(lock + l.vma_lock_rwsem as u64, l.rwsem_count)?;
        if count & RWSEM_WRITER_LOCKED != 0 {
            return Some(0);
        }
        Some((count >> RWSEM_READER_SHIFT) as u32)
    } else {
        None
    }
}
