//! The rule catalogue: every mm locking rule vmalock knows, whether or not it is checked yet.
//!
//! Unimplemented rules are listed too, so `vmalock probe` can tell which of them a kernel's
//! hooks would allow checking, and reports can cite a rule by id with its source and fix.

/// One locking rule, as documented in the kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// Stable id, used in verdict lines and on the command line.
    pub id: &'static str,
    pub title: &'static str,
    /// One line: what the rule requires and why.
    pub explanation: &'static str,
    /// Where the rule is stated or enforced in the kernel source.
    pub source: &'static str,
    /// What a kernel developer would do about a violation.
    pub fix: &'static str,
    /// Hooks the check needs (`tracepoint:…`, `fentry:…`, `fexit:…`, `iter:…`, or a bare
    /// tracepoint name such as `sched_process_exit`).
    pub needs: &'static [&'static str],
    /// Whether the model checks it today.
    pub implemented: bool,
}

pub static RULES: &[Rule] = &[
    Rule {
        id: "mmap-lock-balance",
        title: "mmap_lock acquires and releases balance per task",
        explanation: "Every mmap_lock release matches an acquire by the same task (except \
            mmap_read_unlock_non_owner), no task re-takes an mmap_lock it holds for write, and no \
            task exits holding one.",
        source: "include/linux/mmap_lock.h (mmap_write_lock, mmap_write_unlock, \
            mmap_write_downgrade, mmap_read_unlock_non_owner); include/trace/events/mmap_lock.h; \
            kernel/exit.c do_exit()",
        fix: "Pair every mmap_*_lock with the matching mmap_*_unlock on all paths, including \
            error paths; use mmap_write_downgrade rather than unlock+relock; hand a read lock to \
            another context only with mmap_read_unlock_non_owner.",
        needs: &["tracepoint:mmap_lock", "sched_process_exit"],
        implemented: true,
    },
    Rule {
        id: "vma-write-needs-mmap-write",
        title: "vma_start_write needs mmap_lock held for write",
        explanation: "A VMA may only be write-locked by a task holding its mm's mmap_lock for \
            write: vm_lock_seq is published from mm_lock_seq, which only the mmap write lock \
            keeps stable.",
        source: "include/linux/mmap_lock.h vma_start_write/__vma_start_write \
            (mmap_assert_write_locked)",
        fix: "Take mmap_write_lock (or upgrade the path to it) before calling vma_start_write or \
            any helper that write-locks a VMA.",
        needs: &["tracepoint:mmap_lock", "fentry:__vma_start_write"],
        implemented: false,
    },
    Rule {
        id: "pagewalk-lock-mode",
        title: "page walks hold mmap_lock in the mode their walk_lock asks for",
        explanation: "walk_page_range and friends need mmap_lock held: for read at least with \
            PGWALK_RDLOCK, for write with PGWALK_WRLOCK and PGWALK_WRLOCK_VERIFY.",
        source: "mm/pagewalk.c process_mm_walk_lock; enum page_walk_lock in \
            include/linux/pagewalk.h",
        fix: "Take the mmap_lock in the mode the mm_walk_ops' walk_lock declares, or declare the \
            walk_lock that matches the lock the caller really holds.",
        needs: &["tracepoint:mmap_lock", "fentry:walk_page_range"],
        implemented: false,
    },
    Rule {
        id: "pagewalk-vma-write",
        title: "PGWALK_WRLOCK_VERIFY walks only write-locked VMAs",
        explanation: "A walk declaring PGWALK_WRLOCK_VERIFY promises every VMA it visits is \
            already write-locked (PGWALK_WRLOCK locks them itself), so page faults cannot run \
            concurrently under per-VMA locks.",
        source: "mm/pagewalk.c process_vma_walk_lock; include/linux/pagewalk.h",
        fix: "vma_start_write every VMA in the range before the walk, or use PGWALK_WRLOCK so \
            the walker locks each VMA.",
        needs: &["fentry:walk_page_range", "fentry:__vma_start_write"],
        implemented: false,
    },
    Rule {
        id: "vm-flags-locked",
        title: "vm_flags of an attached VMA change only under its write lock",
        explanation: "vm_flags_set/clear/mod write-lock the VMA and vm_flags_reset asserts it, \
            because per-VMA-lock page faults read vm_flags without mmap_lock.",
        source: "include/linux/mm.h vm_flags_set/vm_flags_reset/vm_flags_mod → vma_start_write",
        fix: "Change flags with the vm_flags_* helpers under mmap_write_lock instead of writing \
            vm_flags directly; vm_flags_init is only for VMAs not yet in the tree.",
        needs: &["fentry:__vma_start_write", "iter:task_vma"],
        implemented: false,
    },
    Rule {
        id: "vma-prepare-prelocked",
        title: "VMAs handed to vma_prepare are write-locked",
        explanation: "vma_prepare's vma, adj_next, remove and remove2 are about to be changed \
            or freed, so each must be write-locked first to fence off per-VMA-lock readers.",
        source: "mm/vma.c vma_prepare; mm/vma.h struct vma_prepare",
        fix: "vma_start_write every VMA the operation touches before vma_prepare (merge, split, \
            expand and shrink paths).",
        needs: &["fentry:vma_prepare", "fentry:__vma_start_write"],
        implemented: false,
    },
    Rule {
        id: "new-vma-locked",
        title: "new VMAs are write-locked before they become visible",
        explanation: "A VMA inserted into the mm's maple tree is visible to lock_vma_under_rcu at \
            once, so it must be write-locked until it is fully initialised.",
        source: "mm/vma.c __mmap_region/__mmap_new_vma, vma_link; mm/mmap.c do_brk_flags, \
            __install_special_mapping",
        fix: "vma_start_write the new VMA before vma_iter_store/vma_link, as the mmap and brk \
            paths do.",
        needs: &[
            "fentry:do_brk_flags",
            "fentry:__install_special_mapping",
            "fentry:__mmap_region",
            "fentry:__vma_start_write",
        ],
        implemented: false,
    },
    Rule {
        id: "no-mmap-under-vma-read",
        title: "no mmap_lock while holding a VMA read lock",
        explanation: "A task holding a per-VMA read lock from lock_vma_under_rcu must vma_end_read \
            before taking mmap_lock: a writer holding mmap_lock waits in vma_start_write for \
            that reader, which waits for mmap_lock (ABBA).",
        source: "mm/memory.c lock_vma_under_rcu; include/linux/mmap_lock.h vma_end_read; \
            Documentation/mm/process_addrs.rst",
        fix: "Drop the VMA lock with vma_end_read (or return VM_FAULT_RETRY and let the caller \
            retry under mmap_lock) before taking the mmap_lock.",
        needs: &["fentry:lock_vma_under_rcu", "tracepoint:mmap_lock"],
        implemented: false,
    },
    Rule {
        id: "lock-order",
        title: "mm locks are taken in the documented order",
        explanation: "mmap_lock, then the VMA write lock, then i_mmap_rwsem, then anon_vma's \
            rwsem, then page table locks; two tasks taking a pair in opposite orders is a \
            possible circular locking dependency, as lockdep would report.",
        source: "mm/rmap.c lock ordering comment; Documentation/mm/process_addrs.rst",
        fix: "Restructure the path to take the locks in the documented order, or drop the inner \
            lock before taking the outer one and revalidate.",
        needs: &[
            "tracepoint:mmap_lock",
            "fentry:__vma_start_write",
            "fentry:down_write",
            "fentry:down_read",
            "fentry:up_write",
            "fentry:up_read",
        ],
        implemented: false,
    },
];

/// The catalogued rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// Id of the one rule the mmap_lock state machine checks.
pub const MMAP_LOCK_BALANCE: &str = "mmap-lock-balance";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn catalogue_has_the_nine_rules_with_unique_ids() {
        let ids: HashSet<_> = RULES.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 9);
        assert_eq!(RULES.len(), 9);
        for r in RULES {
            assert!(!r.needs.is_empty(), "{} needs no hooks", r.id);
            assert_eq!(rule(r.id), Some(r));
        }
        assert_eq!(rule("no-such-rule"), None);
    }

    #[test]
    fn only_mmap_lock_balance_is_implemented() {
        let implemented: Vec<_> = RULES
            .iter()
            .filter(|r| r.implemented)
            .map(|r| r.id)
            .collect();
        assert_eq!(implemented, [MMAP_LOCK_BALANCE]);
        assert!(
            rule(MMAP_LOCK_BALANCE)
                .unwrap()
                .needs
                .contains(&"sched_process_exit")
        );
    }
}
