// SPDX-License-Identifier: GPL-2.0
/*
 * vmalock_test - break the kernel's mm locking rules ON PURPOSE, one mode per
 * rule, each with a legal twin, as ground truth for vmalock's tests.
 *
 * Test kernels only: several modes make the kernel print a WARNING and taint
 * itself (see "Side effects" below).  Never load this on a machine you care about.
 *
 * INTERFACE
 *   /sys/kernel/debug/vmalock_test/trigger  (debugfs, mode 0600)
 *   read:   the modes this build supports on this kernel, one per line,
 *           "MODE RULE-ID"; RULE-ID is the vmalock rule the mode breaks, or
 *           "legal" for a twin that does the same thing correctly.
 *   write:  "MODE" (a trailing newline is fine), e.g. `echo MODE > trigger`.
 *           The mode runs synchronously, in the writer's context, on the
 *           writer's mm (current->mm).  The write returns its byte count on
 *           success, or -EINVAL (unknown mode), -ENOENT (no suitable VMA),
 *           -EAGAIN (a per-VMA read lock could not be taken: retry),
 *           -EOPNOTSUPP (known mode, not possible on this kernel/build),
 *           -EINTR (interrupted while waiting for another trigger); the
 *           pagewalk modes may also return hmm_range_fault()'s or
 *           mmu_interval_notifier_insert()'s error (-EBUSY, -ENOMEM, ...).
 *   Modes named "fault-*" are the exception: the write only ARMS the mode on
 *   that open file (returns the byte count).  The writer must then mmap()
 *   the SAME file descriptor (one page, PROT_READ, MAP_PRIVATE or MAP_SHARED,
 *   offset 0) and read the page from user space.  That user-mode page fault
 *   is where the mode runs: the kernel's own fault path (arch fault handler ->
 *   lock_vma_under_rcu -> handle_mm_fault -> ... -> vm_ops->fault) calls this
 *   module's ->fault handler with the per-VMA read lock held, exactly like a
 *   buggy driver's fault handler would be.  The page then reads as ASCII
 *   "%d\n": 0 = the mode ran; -EAGAIN = the fault did not arrive under the
 *   per-VMA lock (the kernel fell back to the mmap_lock; munmap, re-arm, and
 *   retry); -ENODATA = nothing was armed.  vmalock-trigger.c (next to this
 *   file) does all of that for any mode: `vmalock-trigger MODE`.
 *   Why: on kernels that do not export lock_vma_under_rcu (Debian 6.12) a
 *   module cannot take a per-VMA read lock that the tracer can see (the inline
 *   vma_start_read never reaches lock_vma_under_rcu's hooks); a user-mode page
 *   fault on a module-provided mapping is the only way to get one.
 *
 * WHICH VMA
 *   Modes that act on "a VMA" take the first VMA of current->mm that is
 *   anonymous (vma_is_anonymous) and writable (VM_WRITE), found with a VMA
 *   iterator under the mmap_lock the mode holds (for a static busybox that
 *   is the anonymous .bss/brk VMA just after the binary); none -> -ENOENT.  The per-VMA read-lock modes instead lock the VMA that
 *   contains the writer's user stack pointer (lock_vma_under_rcu needs an
 *   address and must not be preceded by an mmap_lock acquisition in the
 *   twin), and the fault-* modes act on the mapping of the trigger file.
 *
 * MODES (name, rule broken, what it does, where the kernel states the rule)
 *
 *   mmap-release-unheld          mmap-lock-balance
 *       down_read(&mm->mmap_lock) (raw rwsem: no mmap_lock tracepoint), then
 *       mmap_read_unlock(mm) (traces mmap_lock_released).  The trace shows a
 *       release the task never acquired; the rwsem itself stays balanced.
 *       Rule: include/linux/mmap_lock.h - every mmap_*_lock() emits
 *       start_locking/acquire_returned and every mmap_*_unlock() emits
 *       released; a release pairs with an acquire by the same task except
 *       mmap_read_unlock_non_owner().
 *   mmap-hold-to-exit            mmap-lock-balance
 *       mmap_read_lock(mm) (traced acquire), then up_read(&mm->mmap_lock)
 *       (untraced release).  The trace shows the task still holding the
 *       mmap_lock when it exits (so the writer should be a short-lived
 *       process, e.g. `sh -c 'echo mmap-hold-to-exit > trigger'` or
 *       vmalock-trigger; a shell's `echo` builtin writes from the shell itself).
 *       The rwsem itself is balanced.
 *   mmap-release-held            legal (twin of both)
 *       mmap_read_lock(mm); mmap_read_unlock(mm).
 *
 *   vma-write-under-mmap-read    vma-write-needs-mmap-write
 *       mmap_read_lock; vma_start_write(vma); mmap_read_unlock.
 *       Rule: Documentation/mm/process_addrs.rst (6.13+, a stub in 6.12):
 *       "To take a VMA write lock you **must** have already acquired an
 *       mmap_write_lock"; and
 *       include/linux/mm.h (6.12) / mmap_lock.h (6.13+): __is_vma_write_locked()
 *       does mmap_assert_write_locked() before comparing sequence numbers.
 *   vma-write-under-mmap-write   legal
 *       mmap_write_lock; vma_start_write(vma); mmap_write_unlock.
 *
 *   vm-flags-under-mmap-read     vm-flags-locked
 *       mmap_read_lock; toggle VM_SOFTDIRTY in the VMA's flags word WITHOUT
 *       the VMA write lock; mmap_read_unlock.  The toggle is done with an
 *       atomic change_bit() on the same storage the kernel's own unlocked
 *       "__" helpers write (6.1: vma->vm_flags; 6.3..7.0:
 *       ACCESS_PRIVATE(vma, __vm_flags); 7.x: vma->flags.__vma_flags[0]).
 *       Atomic, because on 7.x some flags (VM_ATOMIC_SET_ALLOWED) are legally
 *       set atomically under the mmap READ lock, and a plain read-modify-write
 *       (or 7.x's __vm_flags_mod(), which clears the word then rewrites it)
 *       could lose such an update or show lockless page-fault readers a
 *       transient all-zero vm_flags.
 *       The flag is LEFT toggled (not flipped back), so that the change is
 *       visible to VMA snapshots taken after the write returns ("a field
 *       changed while vm_lock_seq did not move"); running the mode again
 *       toggles it back.  VM_SOFTDIRTY is harmless either way on the private
 *       anonymous VMA chosen: set = "whole VMA soft-dirty" (what every new
 *       mapping gets), clear = what `echo 4 > /proc/PID/clear_refs` does; it
 *       only changes soft-dirty reporting in /proc/PID/pagemap (write-notify
 *       only depends on it for shared mappings) and VMA merging ignores it.
 *       Rule: include/linux/mm_types.h (6.3+): "To modify use
 *       vm_flags_{init|reset|set|clear|mod} functions", each of which
 *       vma_start_write()s or asserts the VMA write lock;
 *       Documentation/mm/process_addrs.rst field table: __vm_flags writable
 *       under "mmap write, VMA write".  On 6.1 (no VMA locks) the same write
 *       breaks the older rule "vm_flags changes need mmap_lock for write".
 *   vm-flags-under-vma-write     legal
 *       mmap_write_lock; vm_flags_clear()/vm_flags_set() VM_SOFTDIRTY (both
 *       vma_start_write() first); mmap_write_unlock.  Same toggle, same VMA.
 *       6.1 has no vm_flags_*(): plain write under mmap_write_lock.
 *
 *   mmap-under-vma-read          no-mmap-under-vma-read
 *       vma = lock_vma_under_rcu(mm, user sp); mmap_read_lock_killable(mm)
 *       (and mmap_read_unlock() if it succeeded); vma_end_read(vma).  A
 *       BLOCKING lock: mmap_read_trylock() under the VMA lock is legal (the
 *       kernel does it in __vmf_anon_prepare) and cannot deadlock; killable,
 *       so a real deadlock here could still be broken (see
 *       vt_mmap_lock_blocking()).  Needs lock_vma_under_rcu exported to
 *       modules (Debian 7.2.13: yes; Debian 6.12: no -> -EOPNOTSUPP).
 *       Rule: Documentation/mm/process_addrs.rst: "While it's possible to
 *       obtain a VMA lock while holding an mmap read lock, attempting to do
 *       the reverse is invalid as it can result in deadlock - if another task
 *       already holds an mmap write lock and attempts to acquire a VMA write
 *       lock that will deadlock on the VMA read lock."
 *   vma-read-alone               legal
 *       lock_vma_under_rcu + vma_end_read only.
 *   fault-mmap-under-vma-read    no-mmap-under-vma-read
 *       (fault-* protocol above) in ->fault, which the kernel calls under the
 *       per-VMA read lock (FAULT_FLAG_VMA_LOCK; checked, else -EAGAIN):
 *       mmap_read_lock_killable(mm) and mmap_read_unlock if it succeeded.
 *   fault-mmap-trylock-under-vma-read     legal
 *       the same fault with mmap_read_trylock(): what the kernel's own
 *       __vmf_anon_prepare() does under the per-VMA lock.
 *       Works on 6.7+ (file-backed faults under the VMA lock,
 *       mm/memory.c vmf_can_call_fault(): ->fault runs under the VMA lock when
 *       the vm_ops have ->map_pages, which this module provides as a no-op).
 *   fault-vma-read-alone         legal
 *       same fault, no mmap_lock.
 *
 *   pagewalk-rdlock-under-vma-read        pagewalk-lock-mode
 *       vma = lock_vma_under_rcu(mm, user sp); hmm_range_fault() over that
 *       one page (snapshot only: no HMM_PFN_REQ_* flags, so it never faults
 *       anything in); vma_end_read.  hmm_range_fault is exported and walks
 *       with walk_page_range(..., &hmm_walk_ops) whose walk_lock is
 *       PGWALK_RDLOCK, which requires the mmap_lock; here only the VMA read
 *       lock is held.  Needs lock_vma_under_rcu exported (7.2).
 *   fault-pagewalk-rdlock-under-vma-read  pagewalk-lock-mode
 *       the same from ->fault under the kernel's per-VMA read lock, over the
 *       faulting page of the trigger mapping (6.7+).
 *   pagewalk-rdlock-under-mmap-read       legal
 *       mmap_read_lock; hmm_range_fault over one page of the first anonymous
 *       writable VMA; mmap_read_unlock.
 *       Rule: mm/pagewalk.c process_mm_walk_lock(): PGWALK_RDLOCK ->
 *       mmap_assert_locked(mm); include/linux/pagewalk.h enum page_walk_lock.
 *       Safety: the walk covers only the VMA we hold read-locked, and the VMA
 *       read lock keeps that VMA and its page tables (free_pgtables and
 *       khugepaged's anon collapse both write-lock the VMA first; the
 *       trigger's own file is not THP-collapsible) in place; PTE tables are
 *       RCU-freed and pte_offset_map_lock() revalidates.  hmm needs an
 *       mmu_interval_notifier on the mm: inserted (whole user address space,
 *       its invalidate only bumps the sequence) before any lock is taken and
 *       removed afterwards (fault-*: when the trigger file is released).
 *       Inserting the first notifier on an mm allocates the mm's
 *       notifier_subscriptions for the rest of its life (harmless).
 *
 *   mmap-then-i_rwsem            lock-order
 *       mmap_read_lock(mm); inode_lock(trigger inode); inode_unlock;
 *       mmap_read_unlock.  Inverts the documented order i_rwsem -> mmap_lock.
 *       Blocking inode_lock, but it cannot deadlock: the only code that takes
 *       this debugfs inode's i_rwsem together with an mmap_lock is this
 *       module, and every mode runs under the module's own mutex; the VFS
 *       takes it only for setattr-like operations on the debugfs file, which
 *       never touch user memory.
 *       Rule: mm/rmap.c "Lock ordering in mm: inode->i_rwsem (while writing or
 *       truncating, not reading or faulting) -> mm->mmap_lock -> ...".
 *   i_rwsem-then-mmap            legal
 *       inode_lock(trigger inode); mmap_read_lock; unlock both.
 *       (Running both gives the tracer the two edges of a cycle.)
 *   i_mmap-then-mmap             lock-order
 *       i_mmap_lock_read(mapping of the first file-backed VMA: the trigger's
 *       own binary, pinned with get_file); mmap_read_lock(mm); unlock both.
 *       Inverts the documented order mm->mmap_lock -> mapping->i_mmap_rwsem.
 *       vmalock learns this mapping's i_mmap_rwsem from the trigger's own
 *       VMAs (exec, faults), unlike the debugfs inode's i_rwsem above, which
 *       no VMA of the process points to.  Blocking, but cannot deadlock in a
 *       test guest: the read hold only blocks an i_mmap writer (mmap/munmap
 *       of that binary elsewhere), which never waits for this process's
 *       mmap_lock, and this single-threaded process is inside a syscall, so
 *       only remote users (khugepaged, /proc readers) take its mmap_lock.
 *   mmap-then-i_mmap             legal
 *       mmap_read_lock(mm); i_mmap_lock_read(the same mapping); unlock both.
 *
 * SIDE EFFECTS (test kernels only)
 *   - vma-write-under-mmap-read: vma_start_write() calls
 *     mmap_assert_write_locked(), which on kernels WITHOUT lockdep is
 *     rwsem_assert_held_write_nolockdep() = WARN_ON(!write-locked) - not
 *     gated by CONFIG_DEBUG_VM.  So every run prints a WARNING with a
 *     backtrace and taints the kernel (TAINT_WARN); it is not a BUG and the
 *     kernel carries on (panic_on_warn is 0 on Debian).  With lockdep it is a
 *     lockdep_assert_held_write() WARN instead.
 *     State left behind: vma->vm_lock_seq == mm->mm_lock_seq(.sequence),
 *     which is EVEN (no writer is inside the mm's write-seqcount).  While that
 *     holds, vma_start_read()/lock_vma_under_rcu() treat the VMA as
 *     write-locked and fail, so page faults on that VMA fall back to the
 *     mmap_lock path (slower, correct).  The next mmap_write_lock() makes the
 *     sequence odd and its mmap_write_unlock() (vma_end_write_all) moves it
 *     past the stale value, so the VMA is unlocked again and later
 *     vma_start_write() calls lock it normally.  Nothing else reads
 *     vm_lock_seq without first asserting the mmap write lock.
 *     6.12: vma_start_write() is fully inline: down_write(&vma->vm_lock->lock)
 *     (waits for current VMA readers), WRITE_ONCE(vm_lock_seq), up_write.
 *     6.13+: __vma_start_write() (exported GPL) raises the exclude-readers
 *     bias in vm_refcnt and waits on mm->vma_writer_wait, a single-waiter
 *     rcuwait.  Legal writers are excluded because we hold the mmap read
 *     lock, and the module mutex keeps two illegal writers from waiting at
 *     once, so the single-waiter assumption still holds.
 *   - vm-flags-*: VM_SOFTDIRTY left toggled (see above).
 *   - pagewalk-*-under-vma-read modes (no mmap_lock): hmm_range_fault(),
 *     walk_page_range() and find_vma() (twice) call mmap_assert_locked(),
 *     WARN_ON on non-lockdep kernels: four WARNINGs per run on 6.12.
 *   - pagewalk modes, first use on an mm: mmu_interval_notifier_insert()
 *     registers the mm's notifier_subscriptions via mmu_notifier_register(),
 *     i.e. mmap_write_lock + mm_take_all_locks() (write-locks every VMA, takes
 *     every anon_vma and i_mmap lock).  Legal, but a burst of lock events.
 *   - lock-order modes on a PROVE_LOCKING kernel: once both have run, lockdep
 *     reports a circular dependency (mmap_lock vs the debugfs i_rwsem class)
 *     and switches itself off for the rest of the boot.
 *   - mmap-hold-to-exit / mmap-release-unheld: no kernel-visible effect;
 *     only the tracepoint stream is unbalanced.
 *   - fault-*: mapping the trigger file puts a freshly allocated, order-0,
 *     non-page-cache page in the process (freed on munmap); its VMA is
 *     VM_DONTCOPY | VM_DONTEXPAND.
 *
 * RULES A MODULE CANNOT BREAK (or not safely), AND WHY
 *   - pagewalk-lock-mode with PGWALK_WRLOCK / WRLOCK_VERIFY / VMA_RDLOCK_VERIFY,
 *     and pagewalk-vma-write: they need a walk whose mm_walk_ops a module
 *     chooses.  walk_page_range, walk_page_vma, walk_page_range_vma,
 *     walk_page_range_novma, walk_page_mapping are NOT exported on Debian
 *     6.1.0-56, 6.12.111/6.12.117 or 7.2.13 (checked in Module.symvers; an
 *     upstream export was proposed in Nov 2024 and refused: "We really should
 *     not expose all these page table detail to modules").  The exported walk
 *     users run with fixed ops: hmm_range_fault (hmm_walk_ops, PGWALK_RDLOCK)
 *     gives the RDLOCK modes above; migrate_vma_setup (also RDLOCK) changes
 *     page tables (migration entries), so calling it without the mmap_lock is
 *     not safe.  A "pagewalk-wrlock-under-mmap-read" mode would therefore
 *     need walk_page_range with our own ops: not possible.
 *   - vma-prepare-prelocked: vma_prepare() is static in mm/vma.c (6.12, 7.2;
 *     in mm/mmap.c 6.3..6.11, absent in 6.1) and nothing exported calls it
 *     with caller-chosen VMAs; breaking it means calling into VMA merge/split
 *     internals with unlocked VMAs, i.e. patching the kernel.
 *   - new-vma-locked: VMAs are inserted only by mm-internal code
 *     (__mmap_region, do_brk_flags, _install_special_mapping, vma_link,
 *     insert_vm_struct - none exported).  The exported entry points (vm_mmap,
 *     vm_brk_flags, vm_munmap) run the kernel's own, correct insertion path.
 *     Inserting a VMA into mm->mm_mt by hand (mas_store_gfp is exported)
 *     would corrupt the mm (map_count, rmap, accounting): not safe.
 *   - mmap-lock-balance "re-take an mmap_lock held for write": a blocking
 *     re-take deadlocks at once, and mmap_write_trylock() is not a
 *     mmap_lock.h API on 6.12+ (6.1 still has it); left out.  "Downgrade"
 *     is legal by definition.
 *
 * MODULE.SYMVERS (what this module links against; "-" = not exported)
 *   symbol                       6.1.0-56  6.12.111/117  7.2.13
 *   down_read/up_read/down_read_trylock/down_write  EXPORT_SYMBOL everywhere
 *   __mmap_lock_do_trace_*       yes       yes           yes (mmap_*lock inlines)
 *   mas_find (for_each_vma)      GPL       GPL           GPL
 *   __vma_start_write            -         - (inline)    GPL
 *   lock_vma_under_rcu           -         -             GPL
 *   walk_page_range (any walk_*) -         -             -
 *   hmm_range_fault              yes       yes           yes
 *   mmu_interval_notifier_insert/_remove, mmu_interval_read_begin: GPL everywhere
 *   debugfs_create_file_unsafe   GPL       GPL           GPL
 *   (debugfs_create_file's full proxy has no ->mmap, hence _unsafe: it swaps
 *   in these fops at open; this module's fops->owner pins the module while a
 *   trigger file is open or mapped.)
 *   Kbuild greps $(objtree)/Module.symvers for lock_vma_under_rcu and
 *   __vma_start_write and passes -DVMALOCK_HAVE_<symbol>, so one source
 *   builds everywhere and lists only what can run.
 *
 * KERNELS
 *   6.1 (no CONFIG_PER_VMA_LOCK): mmap-*, vm-flags-*, lock-order modes.
 *   6.12 (Debian): + vma-write-*, fault-*, pagewalk twin.
 *   7.x (Debian 7.2: __vma_start_write and lock_vma_under_rcu exported): all.
 *   Built without warnings against Debian 6.1.0-56 and 6.12.111/6.12.117
 *   headers, and booted (QEMU TCG, busybox initramfs): every listed mode
 *   returned 0 twice in a row on 6.12.117 and 6.1.0-56, the kernel stayed up.
 *   7.x: Debian's 7.2.13 headers need gcc-16 for a kbuild build; this file
 *   was only compiled by hand against them with gcc-12 (all symbols it then
 *   imports are exported by 7.2.13), never loaded.
 */

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/version.h>
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/mm.h>
#include <linux/mm_types.h>
#include <linux/mmap_lock.h>
#include <linux/rwsem.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/ptrace.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/bitops.h>
#include <linux/atomic.h>
#if IS_ENABLED(CONFIG_HMM_MIRROR)
#include <linux/hmm.h>
#include <linux/mmu_notifier.h>
#endif

/* ---- what this kernel/build can do ---------------------------------------- */

#ifdef CONFIG_PER_VMA_LOCK
/* 6.13+ vma_start_write() calls the out-of-line __vma_start_write(). */
# if LINUX_VERSION_CODE < KERNEL_VERSION(6, 13, 0) || defined(VMALOCK_HAVE___vma_start_write)
#  define VT_VMA_WRITE 1
# endif
/* A per-VMA read lock the tracer can see, taken synchronously. */
# ifdef VMALOCK_HAVE_lock_vma_under_rcu
#  define VT_SYNC_VMA_READ 1
# endif
/* File-backed faults run ->fault under the per-VMA lock from 6.7 on. */
# if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
#  define VT_FAULT 1
# endif
/* hmm_range_fault = an exported PGWALK_RDLOCK page walk. */
# if IS_ENABLED(CONFIG_HMM_MIRROR)
#  define VT_HMM 1
# endif
#endif

#ifndef VT_VMA_WRITE
# define VT_VMA_WRITE 0
#endif
#ifndef VT_SYNC_VMA_READ
# define VT_SYNC_VMA_READ 0
#endif
#ifndef VT_FAULT
# define VT_FAULT 0
#endif
#ifndef VT_HMM
# define VT_HMM 0
#endif

/* ---- per open file -------------------------------------------------------- */

struct vt_file {
	struct inode *inode;
	atomic_t armed;			/* index into vt_modes[], or -1 */
#if VT_HMM
	bool notifier_live;
	struct mmu_interval_notifier notifier;
#endif
};

/* Serialises every mode run from write(); see the 6.13+ note above. */
static DEFINE_MUTEX(vt_mutex);
static struct dentry *vt_dir;

/* fault-* modes: what ->fault does under the per-VMA read lock */
enum vt_fault_kind {
	VT_NOT_FAULT = 0,
	VT_FAULT_MMAP,		/* fault-mmap-under-vma-read */
	VT_FAULT_ALONE,		/* fault-vma-read-alone */
	VT_FAULT_MMAP_TRYLOCK,	/* fault-mmap-trylock-under-vma-read */
	VT_FAULT_PAGEWALK,	/* fault-pagewalk-rdlock-under-vma-read */
};

struct vt_mode {
	const char *name;
	const char *rule;	/* vmalock rule id broken, or "legal" */
	bool supported;
	enum vt_fault_kind fault; /* != 0: runs in ->fault of the trigger mapping */
	int (*run)(struct vt_file *vf, struct mm_struct *mm);
};

/* First anonymous, writable VMA; the caller holds mm's mmap_lock. */
static struct vm_area_struct *vt_pick_vma(struct mm_struct *mm)
{
	struct vm_area_struct *vma;
	VMA_ITERATOR(vmi, mm, 0);

	for_each_vma(vmi, vma)
		if (vma_is_anonymous(vma) && (vma->vm_flags & VM_WRITE))
			return vma;
	return NULL;
}

/* ---- mmap-lock-balance ---------------------------------------------------- */

static int vt_mmap_release_unheld(struct vt_file *vf, struct mm_struct *mm)
{
	down_read(&mm->mmap_lock);	/* raw: no start_locking/acquire_returned */
	mmap_read_unlock(mm);		/* traced: released(write=0) */
	return 0;
}

static int vt_mmap_hold_to_exit(struct vt_file *vf, struct mm_struct *mm)
{
	mmap_read_lock(mm);		/* traced acquire */
	up_read(&mm->mmap_lock);	/* raw: no released event */
	return 0;
}

static int vt_mmap_release_held(struct vt_file *vf, struct mm_struct *mm)
{
	mmap_read_lock(mm);
	mmap_read_unlock(mm);
	return 0;
}

/* ---- vma-write-needs-mmap-write ------------------------------------------- */

#if VT_VMA_WRITE
static int vt_vma_write(struct mm_struct *mm, bool write)
{
	struct vm_area_struct *vma;
	int ret = 0;

	if (write)
		mmap_write_lock(mm);
	else
		mmap_read_lock(mm);
	vma = vt_pick_vma(mm);
	if (vma)
		vma_start_write(vma);	/* !write: WARNs, see the header */
	else
		ret = -ENOENT;
	if (write)
		mmap_write_unlock(mm);
	else
		mmap_read_unlock(mm);
	return ret;
}

static int vt_vma_write_under_mmap_read(struct vt_file *vf, struct mm_struct *mm)
{
	return vt_vma_write(mm, false);
}

static int vt_vma_write_under_mmap_write(struct vt_file *vf, struct mm_struct *mm)
{
	return vt_vma_write(mm, true);
}
#else
# define vt_vma_write_under_mmap_read NULL
# define vt_vma_write_under_mmap_write NULL
#endif

/* ---- vm-flags-locked ------------------------------------------------------ */

/* The word the kernel's own unlocked helpers write. */
static unsigned long *vt_flags_word(struct vm_area_struct *vma)
{
#if defined(EMPTY_VMA_FLAGS)
	/* 7.x: vma_flags_t bitmap; vm_flags is a const alias of word 0. */
	return &vma->flags.__vma_flags[0];
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	/* 6.3+: const vm_flags aliased by the private __vm_flags. */
	return &ACCESS_PRIVATE(vma, __vm_flags);
#else
	return &vma->vm_flags;
#endif
}

static int vt_vm_flags_under_mmap_read(struct vt_file *vf, struct mm_struct *mm)
{
	struct vm_area_struct *vma;
	int ret = 0;

	if (!VM_SOFTDIRTY)		/* !CONFIG_MEM_SOFT_DIRTY */
		return -EOPNOTSUPP;
	mmap_read_lock(mm);
	vma = vt_pick_vma(mm);
	if (vma)
		change_bit(__ffs(VM_SOFTDIRTY), vt_flags_word(vma));
	else
		ret = -ENOENT;
	mmap_read_unlock(mm);
	return ret;
}

static int vt_vm_flags_under_vma_write(struct vt_file *vf, struct mm_struct *mm)
{
	struct vm_area_struct *vma;
	int ret = 0;

	if (!VM_SOFTDIRTY)
		return -EOPNOTSUPP;
	mmap_write_lock(mm);
	vma = vt_pick_vma(mm);
	if (!vma) {
		ret = -ENOENT;
	} else {
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
		if (vma->vm_flags & VM_SOFTDIRTY)
			vm_flags_clear(vma, VM_SOFTDIRTY);
		else
			vm_flags_set(vma, VM_SOFTDIRTY);
#else
		vma->vm_flags ^= VM_SOFTDIRTY;	/* 6.1: mmap write lock = the rule */
#endif
	}
	mmap_write_unlock(mm);
	return ret;
}

/* ---- pagewalk-lock-mode via hmm_range_fault (PGWALK_RDLOCK) --------------- */

#if VT_HMM
static bool vt_invalidate(struct mmu_interval_notifier *sub,
			  const struct mmu_notifier_range *range,
			  unsigned long cur_seq)
{
	mmu_interval_set_seq(sub, cur_seq);
	return true;
}

static const struct mmu_interval_notifier_ops vt_mni_ops = {
	.invalidate = vt_invalidate,
};

/*
 * hmm_range_fault needs an interval notifier on the mm.  Insert it with no mm
 * lock held (the first one on an mm takes mmap_write_lock to allocate the
 * mm's notifier_subscriptions); it covers the whole user address space.
 */
static int vt_notifier_insert(struct mmu_interval_notifier *sub,
			      struct mm_struct *mm)
{
	return mmu_interval_notifier_insert(sub, mm, 0, TASK_SIZE, &vt_mni_ops);
}

/* Snapshot one page with hmm_range_fault: a PGWALK_RDLOCK walk. */
static int vt_hmm_walk(struct mmu_interval_notifier *sub, unsigned long addr)
{
	unsigned long pfn = 0;
	struct hmm_range range = {
		.notifier = sub,
		.start = addr & PAGE_MASK,
		.end = (addr & PAGE_MASK) + PAGE_SIZE,
		.hmm_pfns = &pfn,
		.default_flags = 0,	/* no HMM_PFN_REQ_*: never faults */
		.pfn_flags_mask = 0,
	};
	int tries = 4, ret;

	do {
		range.notifier_seq = mmu_interval_read_begin(sub);
		ret = hmm_range_fault(&range);
	} while (ret == -EBUSY && --tries);
	return ret;
}

static int vt_pagewalk_under_mmap_read(struct vt_file *vf, struct mm_struct *mm)
{
	struct mmu_interval_notifier sub = {};
	struct vm_area_struct *vma;
	int ret;

	ret = vt_notifier_insert(&sub, mm);
	if (ret)
		return ret;
	mmap_read_lock(mm);
	vma = vt_pick_vma(mm);
	ret = vma ? vt_hmm_walk(&sub, vma->vm_start) : -ENOENT;
	mmap_read_unlock(mm);
	mmu_interval_notifier_remove(&sub);
	return ret;
}
#else
# define vt_pagewalk_under_mmap_read NULL
#endif

/* ---- no-mmap-under-vma-read ------------------------------------------------ */

/*
 * A BLOCKING mmap read lock while this task holds a per-VMA read lock: the
 * ABBA of Documentation/mm/process_addrs.rst.  Killable, so that the one way
 * it could really deadlock here (a writer of this mm - only khugepaged could
 * be one for the single-threaded trigger - waiting in vma_start_write() for
 * our VMA read lock) can still be broken with SIGKILL.
 * A trylock is NOT the violation: the kernel itself does mmap_read_trylock()
 * under the VMA lock (mm/memory.c __vmf_anon_prepare), since it cannot block.
 */
static void __maybe_unused vt_mmap_lock_blocking(struct mm_struct *mm)
{
	if (!mmap_read_lock_killable(mm))
		mmap_read_unlock(mm);
}

/* ---- no-mmap-under-vma-read, synchronous (needs lock_vma_under_rcu) ------- */

#if VT_SYNC_VMA_READ
enum vt_vma_read_what { VT_ALONE, VT_MMAP_BLOCKING, VT_PAGEWALK };

static int vt_sync_vma_read(struct vt_file *vf, struct mm_struct *mm,
			    enum vt_vma_read_what what)
{
	unsigned long sp = user_stack_pointer(current_pt_regs());
	struct vm_area_struct *vma;
	int ret = 0;
# if VT_HMM
	struct mmu_interval_notifier sub = {};

	if (what == VT_PAGEWALK) {
		ret = vt_notifier_insert(&sub, mm);	/* before any lock */
		if (ret)
			return ret;
	}
# endif
	vma = lock_vma_under_rcu(mm, sp);
	if (!vma) {
		ret = -EAGAIN;
		goto out;
	}
	switch (what) {
	case VT_MMAP_BLOCKING:
		vt_mmap_lock_blocking(mm);	/* the violation */
		break;
	case VT_PAGEWALK:
# if VT_HMM
		ret = vt_hmm_walk(&sub, sp);	/* RDLOCK walk, no mmap_lock */
# endif
		break;
	case VT_ALONE:
		break;
	}
	vma_end_read(vma);
out:
# if VT_HMM
	if (what == VT_PAGEWALK)
		mmu_interval_notifier_remove(&sub);
# endif
	return ret;
}

static int vt_mmap_under_vma_read(struct vt_file *vf, struct mm_struct *mm)
{
	return vt_sync_vma_read(vf, mm, VT_MMAP_BLOCKING);
}

static int vt_vma_read_alone(struct vt_file *vf, struct mm_struct *mm)
{
	return vt_sync_vma_read(vf, mm, VT_ALONE);
}

static int vt_pagewalk_under_vma_read(struct vt_file *vf, struct mm_struct *mm)
{
	return vt_sync_vma_read(vf, mm, VT_PAGEWALK);
}
#else
# define vt_mmap_under_vma_read NULL
# define vt_vma_read_alone NULL
# define vt_pagewalk_under_vma_read NULL
#endif

/* ---- lock-order ----------------------------------------------------------- */

static int vt_mmap_then_i_rwsem(struct vt_file *vf, struct mm_struct *mm)
{
	mmap_read_lock(mm);
	inode_lock(vf->inode);		/* mmap_lock -> i_rwsem: inverted */
	inode_unlock(vf->inode);
	mmap_read_unlock(mm);
	return 0;
}

static int vt_i_rwsem_then_mmap(struct vt_file *vf, struct mm_struct *mm)
{
	inode_lock(vf->inode);		/* i_rwsem -> mmap_lock: documented */
	mmap_read_lock(mm);
	mmap_read_unlock(mm);
	inode_unlock(vf->inode);
	return 0;
}

/* The first file-backed VMA's file (the trigger's own binary), pinned. */
static struct file *vt_pick_file(struct mm_struct *mm)
{
	struct vm_area_struct *vma;
	struct file *file = NULL;
	VMA_ITERATOR(vmi, mm, 0);

	mmap_read_lock(mm);
	for_each_vma(vmi, vma) {
		if (vma->vm_file) {
			file = get_file(vma->vm_file);
			break;
		}
	}
	mmap_read_unlock(mm);
	return file;
}

static int vt_i_mmap_then_mmap(struct vt_file *vf, struct mm_struct *mm)
{
	struct file *file = vt_pick_file(mm);

	if (!file)
		return -ENOENT;
	i_mmap_lock_read(file->f_mapping);	/* i_mmap_rwsem -> mmap_lock: inverted */
	mmap_read_lock(mm);
	mmap_read_unlock(mm);
	i_mmap_unlock_read(file->f_mapping);
	fput(file);
	return 0;
}

static int vt_mmap_then_i_mmap(struct vt_file *vf, struct mm_struct *mm)
{
	struct file *file = vt_pick_file(mm);

	if (!file)
		return -ENOENT;
	mmap_read_lock(mm);
	i_mmap_lock_read(file->f_mapping);	/* mmap_lock -> i_mmap_rwsem: documented */
	i_mmap_unlock_read(file->f_mapping);
	mmap_read_unlock(mm);
	fput(file);
	return 0;
}

/* ---- the mode table ------------------------------------------------------- */

#define MODE(n, r, ok, fn) { .name = n, .rule = r, .supported = (ok), .run = fn }
#define FMODE(n, r, ok, kind) { .name = n, .rule = r, .supported = (ok), .fault = kind }

static const struct vt_mode vt_modes[] = {
	MODE("mmap-release-unheld", "mmap-lock-balance", true, vt_mmap_release_unheld),
	MODE("mmap-hold-to-exit", "mmap-lock-balance", true, vt_mmap_hold_to_exit),
	MODE("mmap-release-held", "legal", true, vt_mmap_release_held),
	MODE("vma-write-under-mmap-read", "vma-write-needs-mmap-write",
	     VT_VMA_WRITE, vt_vma_write_under_mmap_read),
	MODE("vma-write-under-mmap-write", "legal",
	     VT_VMA_WRITE, vt_vma_write_under_mmap_write),
	MODE("vm-flags-under-mmap-read", "vm-flags-locked", VM_SOFTDIRTY != 0,
	     vt_vm_flags_under_mmap_read),
	MODE("vm-flags-under-vma-write", "legal", VM_SOFTDIRTY != 0,
	     vt_vm_flags_under_vma_write),
	MODE("mmap-under-vma-read", "no-mmap-under-vma-read",
	     VT_SYNC_VMA_READ, vt_mmap_under_vma_read),
	MODE("vma-read-alone", "legal", VT_SYNC_VMA_READ, vt_vma_read_alone),
	FMODE("fault-mmap-under-vma-read", "no-mmap-under-vma-read",
	      VT_FAULT, VT_FAULT_MMAP),
	FMODE("fault-vma-read-alone", "legal", VT_FAULT, VT_FAULT_ALONE),
	FMODE("fault-mmap-trylock-under-vma-read", "legal", VT_FAULT,
	      VT_FAULT_MMAP_TRYLOCK),
	MODE("pagewalk-rdlock-under-vma-read", "pagewalk-lock-mode",
	     VT_SYNC_VMA_READ && VT_HMM, vt_pagewalk_under_vma_read),
	FMODE("fault-pagewalk-rdlock-under-vma-read", "pagewalk-lock-mode",
	      VT_FAULT && VT_HMM, VT_FAULT_PAGEWALK),
	MODE("pagewalk-rdlock-under-mmap-read", "legal", VT_HMM,
	     vt_pagewalk_under_mmap_read),
	MODE("mmap-then-i_rwsem", "lock-order", true, vt_mmap_then_i_rwsem),
	MODE("i_rwsem-then-mmap", "legal", true, vt_i_rwsem_then_mmap),
	MODE("i_mmap-then-mmap", "lock-order", true, vt_i_mmap_then_mmap),
	MODE("mmap-then-i_mmap", "legal", true, vt_mmap_then_i_mmap),
};

/* ---- fault-* modes: the trigger file's mapping ---------------------------- */

#if VT_FAULT
static vm_fault_t vt_map_pages(struct vm_fault *vmf, pgoff_t start_pgoff,
			       pgoff_t end_pgoff)
{
	/*
	 * Maps nothing.  It exists because vmf_can_call_fault() only lets
	 * ->fault run under the per-VMA lock when the vm_ops have ->map_pages.
	 */
	return 0;
}

static vm_fault_t vt_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct vt_file *vf = vma->vm_file->private_data;
	struct mm_struct *mm = vma->vm_mm;
	int mode = atomic_xchg(&vf->armed, -1);
	struct page *page;
	int res = 0;

	if (mode < 0) {
		res = -ENODATA;
	} else if (!(vmf->flags & FAULT_FLAG_VMA_LOCK)) {
		res = -EAGAIN;		/* fell back to the mmap_lock path */
	} else {
		switch (vt_modes[mode].fault) {
		case VT_FAULT_MMAP:
			/* Holding the per-VMA read lock: the violation. */
			vt_mmap_lock_blocking(mm);
			break;
		case VT_FAULT_MMAP_TRYLOCK:
			/* Legal: what __vmf_anon_prepare() does. */
			if (mmap_read_trylock(mm))
				mmap_read_unlock(mm);
			break;
		case VT_FAULT_ALONE:
			break;
		case VT_FAULT_PAGEWALK:
# if VT_HMM
			if (vf->notifier_live && vf->notifier.mm == mm)
				res = vt_hmm_walk(&vf->notifier, vmf->address);
			else
				res = -EXDEV;
# else
			res = -EOPNOTSUPP;
# endif
			break;
		default:
			res = -EINVAL;
		}
	}
	pr_info("vmalock_test: %s pid %d: fault result %d\n",
		mode >= 0 ? vt_modes[mode].name : "(unarmed)",
		task_pid_nr(current), res);

	page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!page)
		return VM_FAULT_OOM;
	snprintf(page_address(page), PAGE_SIZE, "%d\n", res);
	vmf->page = page;	/* our reference goes to the page table */
	return 0;
}

static const struct vm_operations_struct vt_vm_ops = {
	.fault = vt_fault,
	.map_pages = vt_map_pages,
};

static int vt_mmap(struct file *file, struct vm_area_struct *vma)
{
	if (vma->vm_pgoff != 0 || vma_pages(vma) != 1)
		return -EINVAL;
	vm_flags_set(vma, VM_DONTCOPY | VM_DONTEXPAND);
	vma->vm_ops = &vt_vm_ops;
	return 0;
}
#endif /* VT_FAULT */

/* ---- debugfs file --------------------------------------------------------- */

static int vt_open(struct inode *inode, struct file *file)
{
	struct vt_file *vf = kzalloc(sizeof(*vf), GFP_KERNEL);

	if (!vf)
		return -ENOMEM;
	vf->inode = inode;
	atomic_set(&vf->armed, -1);
	file->private_data = vf;
	return 0;
}

static int vt_release(struct inode *inode, struct file *file)
{
	struct vt_file *vf = file->private_data;

#if VT_HMM
	/* No VMA maps this file any more: no fault can be using it. */
	if (vf->notifier_live)
		mmu_interval_notifier_remove(&vf->notifier);
#endif
	kfree(vf);
	return 0;
}

static ssize_t vt_read(struct file *file, char __user *buf, size_t len,
		       loff_t *ppos)
{
	char *out;
	size_t n = 0, cap = PAGE_SIZE;
	ssize_t ret;
	int i;

	out = kmalloc(cap, GFP_KERNEL);
	if (!out)
		return -ENOMEM;
	for (i = 0; i < ARRAY_SIZE(vt_modes); i++)
		if (vt_modes[i].supported)
			n += scnprintf(out + n, cap - n, "%s %s\n",
				       vt_modes[i].name, vt_modes[i].rule);
	ret = simple_read_from_buffer(buf, len, ppos, out, n);
	kfree(out);
	return ret;
}

static ssize_t vt_write(struct file *file, const char __user *ubuf, size_t len,
			loff_t *ppos)
{
	struct vt_file *vf = file->private_data;
	struct mm_struct *mm = current->mm;
	const struct vt_mode *m = NULL;
	char buf[64];
	char *name;
	int i, ret;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	/* Copy before taking any lock: the copy may fault. */
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	name = strim(buf);
	for (i = 0; i < ARRAY_SIZE(vt_modes); i++) {
		if (vt_modes[i].name && !strcmp(name, vt_modes[i].name)) {
			m = &vt_modes[i];
			break;
		}
	}
	if (!m)
		return -EINVAL;
	if (!m->supported)
		return -EOPNOTSUPP;
	if (!mm)
		return -ENOENT;

	if (mutex_lock_interruptible(&vt_mutex))
		return -EINTR;
	if (m->fault) {
		ret = 0;
#if VT_HMM
		/* The notifier must exist before the fault: insert it now. */
		if (m->fault == VT_FAULT_PAGEWALK) {
			if (!vf->notifier_live) {
				ret = vt_notifier_insert(&vf->notifier, mm);
				vf->notifier_live = !ret;
			} else if (vf->notifier.mm != mm) {
				ret = -EXDEV;
			}
		}
#endif
		if (!ret)	/* release: ->fault reads notifier_live after */
			atomic_set_release(&vf->armed, i);
	} else {
		ret = m->run(vf, mm);
	}
	mutex_unlock(&vt_mutex);

	pr_info("vmalock_test: %s (%s) pid %d: %s %d\n", m->name, m->rule,
		task_pid_nr(current), m->fault ? "armed" : "ran", ret);
	return ret ? ret : len;
}

static const struct file_operations vt_fops = {
	.owner = THIS_MODULE,
	.open = vt_open,
	.release = vt_release,
	.read = vt_read,
	.write = vt_write,
#if VT_FAULT
	.mmap = vt_mmap,
#endif
	.llseek = default_llseek,
};

static int __init vt_init(void)
{
	vt_dir = debugfs_create_dir("vmalock_test", NULL);
	if (IS_ERR(vt_dir))
		return PTR_ERR(vt_dir);
	debugfs_create_file_unsafe("trigger", 0600, vt_dir, NULL, &vt_fops);
	pr_info("vmalock_test: loaded (per-VMA locks %s)\n",
		IS_ENABLED(CONFIG_PER_VMA_LOCK) ? "on" : "off");
	return 0;
}

static void __exit vt_exit(void)
{
	debugfs_remove(vt_dir);
}

module_init(vt_init);
module_exit(vt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmalock: break mm locking rules on purpose (test kernels only)");
