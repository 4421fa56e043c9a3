//! The rule catalogue: every mm locking rule vmalock knows, whether or not it is checked yet.
//!
//! Unimplemented rules are listed too, so `vmalock probe` can tell which of them a kernel's
//! hooks would allow checking, and reports can cite a rule by id with its source and fix.

use tracer_common::layout;

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
    /// Kernel functions any one of which, hooked, checks it live.
    pub live_hooks: &'static [&'static str],
    /// Whether VMA snapshots (iter/task_vma) check it too.
    pub by_snapshot: bool,
    /// tracer_common::layout bits without which the rule does not apply to a kernel.
    pub layout: u32,
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
        live_hooks: &[],
        by_snapshot: false,
        layout: 0,
    },
    Rule {
        id: VMA_WRITE_NEEDS_MMAP_WRITE,
        title: "vma_start_write needs mmap_lock held for write",
        explanation: "A VMA may only be write-locked by a task holding its mm's mmap_lock for \
            write: vm_lock_seq is set from mm_lock_seq, which only the mmap write lock keeps \
            stable, and only mmap_write_unlock/downgrade (vma_end_write_all) releases VMA write \
            locks. Checked at __vma_start_write (6.13+), or where vma_start_write is inline \
            (6.4-6.12) at its down_write of vma->vm_lock->lock, against the mmap rwsem's owner; \
            and by snapshot: a VMA still write-locked while the iterator holds mmap_lock for \
            read was locked outside a write section.",
        source: "include/linux/mmap_lock.h vma_start_write, __is_vma_write_locked \
            (mmap_assert_write_locked), vma_end_write_all; Documentation/mm/process_addrs.rst \
            \"To take a VMA write lock you must have already acquired an mmap_write_lock\"",
        fix: "Take mmap_write_lock (or upgrade the path to it) before calling vma_start_write or \
            any helper that write-locks a VMA (vm_flags_set/clear/mod, vma_modify_*).",
        needs: &["fentry:__vma_start_write", "fentry:down_write (vm_lock, 6.4-6.12)", "iter:task_vma"],
        implemented: true,
        live_hooks: &["__vma_start_write", "vma_start_write"],
        by_snapshot: true,
        layout: layout::VMA_SEQ,
    },
    Rule {
        id: PAGEWALK_LOCK_MODE,
        title: "page walks hold the locks their walk_lock declares",
        explanation: "walk_page_range, walk_page_vma and walk_page_range_vma check the caller's \
            locks against ops->walk_lock: PGWALK_RDLOCK needs mmap_lock held (read or write), \
            PGWALK_WRLOCK and PGWALK_WRLOCK_VERIFY need it held for write, \
            PGWALK_VMA_RDLOCK_VERIFY needs the VMA read- or write-locked.",
        source: "mm/pagewalk.c process_mm_walk_lock, process_vma_walk_lock; \
            include/linux/pagewalk.h enum page_walk_lock",
        fix: "Take the mmap_lock in the mode the mm_walk_ops' walk_lock declares (e.g. \
            mmap_read_lock for PGWALK_RDLOCK, mmap_write_lock for PGWALK_WRLOCK), or declare the \
            walk_lock that matches the lock the caller really holds.",
        needs: &["fentry:walk_page_range", "fentry:walk_page_vma"],
        implemented: true,
        live_hooks: &["walk_page_range", "walk_page_range_mm", "walk_page_vma", "walk_page_range_vma"],
        by_snapshot: false,
        layout: layout::WALK,
    },
    Rule {
        id: PAGEWALK_VMA_WRITE,
        title: "a walk under the mmap write lock write-locks every VMA it visits",
        explanation: "With PGWALK_WRLOCK the walker write-locks each VMA before walking it; \
            PGWALK_WRLOCK_VERIFY promises each is already write-locked. Otherwise page faults \
            under per-VMA locks run concurrently with the walk (the s390_reset_cmma bug of the \
            2023 series).",
        source: "mm/pagewalk.c process_vma_walk_lock (vma_start_write / \
            vma_assert_write_locked); include/linux/pagewalk.h",
        fix: "Walk with PGWALK_WRLOCK so the walker locks each VMA, or vma_start_write every VMA \
            in the range before a PGWALK_WRLOCK_VERIFY walk.",
        needs: &["fentry:__walk_page_range", "fentry:walk_page_vma"],
        implemented: true,
        live_hooks: &["__walk_page_range", "walk_page_vma", "walk_page_range_vma"],
        by_snapshot: false,
        layout: layout::WALK | layout::VMA_SEQ,
    },
    Rule {
        id: VM_FLAGS_LOCKED,
        title: "vm_flags, vm_page_prot, vm_policy, vm_userfaultfd_ctx change only under the VMA write lock",
        explanation: "Page faults under per-VMA locks read these fields without mmap_lock, so a \
            change must write-lock the VMA first (vm_flags_set/clear/mod/reset do). Checked when \
            mprotect_fixup, mlock_fixup, mbind_range, madvise_update_vma and \
            userfaultfd_register_range return (the VMA they changed must still \
            be write-locked: that lasts until mmap_write_unlock), and kernel-wide by snapshot: \
            a field changed while vm_lock_seq did not move was changed without the VMA write \
            lock.",
        source: "include/linux/mm.h vm_flags_set/vm_flags_clear/vm_flags_mod/vm_flags_reset; \
            include/linux/mm_types.h (\"To modify use vm_flags_{init|reset|set|clear|mod}\"); \
            Documentation/mm/process_addrs.rst field table",
        fix: "Change flags with the vm_flags_* helpers under mmap_write_lock (they \
            vma_start_write first) instead of writing the field directly; vm_flags_init is only \
            for VMAs not yet in the tree.",
        needs: &[
            "fexit:mprotect_fixup",
            "fexit:mlock_fixup",
            "fexit:mbind_range",
            "fexit:madvise_update_vma",
            "fexit:userfaultfd_register_range",
            "iter:task_vma",
        ],
        implemented: true,
        live_hooks: &[
            "mprotect_fixup:return",
            "mlock_fixup:return",
            "mbind_range:return",
            "madvise_update_vma:return",
            "userfaultfd_register_range:return",
        ],
        by_snapshot: true,
        layout: layout::VMA_SEQ,
    },
    Rule {
        id: VMA_PREPARE_PRELOCKED,
        title: "VMAs handed to vma_prepare are write-locked",
        explanation: "vma_prepare takes the file and anon_vma locks but does not lock VMAs: its \
            vma, adj_next, remove and remove2 are about to be changed or freed, so the caller \
            must have write-locked each to fence off per-VMA-lock readers.",
        source: "mm/vma.c vma_prepare and its callers (vma_expand, vma_shrink, __split_vma, \
            commit_merge); mm/vma.h struct vma_prepare",
        fix: "vma_start_write every VMA the operation touches before vma_prepare (merge, split, \
            expand and shrink paths).",
        needs: &["fentry:vma_prepare"],
        implemented: true,
        live_hooks: &["vma_prepare"],
        by_snapshot: false,
        layout: layout::VMA_PREPARE | layout::VMA_SEQ,
    },
    Rule {
        id: NEW_VMA_LOCKED,
        title: "new VMAs are write-locked before they become visible",
        explanation: "A VMA inserted into the mm's maple tree is visible to lock_vma_under_rcu at \
            once, so it must be write-locked until it is fully initialised. Checked when \
            vma_link and _install_special_mapping return, at ksm_add_vma (which mmap_region and \
            do_brk_flags call on the VMA they just stored, before the end of their write \
            section), and by snapshot: a VMA new to a running mm still at vm_lock_seq == \
            UINT_MAX was never write-locked.",
        source: "mm/vma.c vma_link, __mmap_region; mm/mmap.c do_brk_flags, \
            __install_special_mapping (the 2023 series: \"mm: lock newly mapped VMA\")",
        fix: "vma_start_write the new VMA before vma_iter_store/vma_link, as the mmap and brk \
            paths do.",
        needs: &["fexit:vma_link", "fexit:_install_special_mapping", "fentry:ksm_add_vma", "iter:task_vma"],
        implemented: true,
        live_hooks: &["vma_link", "_install_special_mapping", "ksm_add_vma"],
        by_snapshot: true,
        layout: layout::VMA_SEQ,
    },
    Rule {
        id: NO_MMAP_UNDER_VMA_READ,
        title: "no mmap_lock while holding a VMA read lock",
        explanation: "A task holding a per-VMA read lock from lock_vma_under_rcu must vma_end_read \
            before taking mmap_lock: a writer holding mmap_lock waits in vma_start_write for \
            that reader, which waits for mmap_lock (ABBA).",
        source: "mm/memory.c lock_vma_under_rcu; include/linux/mmap_lock.h vma_end_read; \
            Documentation/mm/process_addrs.rst (\"attempting to do the reverse is invalid as it \
            can result in deadlock\")",
        fix: "Drop the VMA lock with vma_end_read (or return VM_FAULT_RETRY and let the caller \
            retry under mmap_lock) before taking the mmap_lock.",
        needs: &["fexit:lock_vma_under_rcu", "tracepoint:mmap_lock"],
        implemented: true,
        live_hooks: &["lock_vma_under_rcu"],
        by_snapshot: false,
        layout: layout::VMA_SEQ,
    },
    Rule {
        id: LOCK_ORDER,
        title: "mm locks are taken in the documented order",
        explanation: "inode->i_rwsem, then mmap_lock, then the VMA write lock, then \
            i_mmap_rwsem, then anon_vma's rwsem, then page table locks. Taking a lock while \
            holding one documented after it is reported when first seen; two paths taking a \
            pair (or a longer chain) in opposite orders is a possible circular locking \
            dependency, reported with every edge's task and stacks as lockdep does. rwsem \
            readers count (they queue behind a waiting writer); trylocks add no dependency.",
        source: "mm/rmap.c \"Lock ordering in mm\" (top of file); kernel/locking/lockdep.c \
            (check_prev_add, strong dependency paths); Documentation/mm/process_addrs.rst",
        fix: "Restructure the path to take the locks in the documented order, or drop the inner \
            lock before taking the outer one and revalidate (or use a trylock and back off).",
        needs: &[
            "tracepoint:mmap_lock",
            "fentry:__vma_start_write",
            "fexit:lock_vma_under_rcu",
            "fexit:down_write",
            "fexit:down_read",
            "fentry:up_write",
            "fentry:up_read",
        ],
        implemented: true,
        // mmap_lock edges come from the tracepoints alone; which other classes a kernel adds
        // is `lock_order_classes`.
        live_hooks: &[],
        by_snapshot: false,
        layout: 0,
    },
];

/// What a kernel and a run make available to the rules (from the loader, or a trace header).
#[derive(Clone, Debug, Default)]
pub struct Availability {
    /// The mmap_lock tracepoints are attached.
    pub tracepoints: bool,
    /// Kernel functions hooked (fentry/fexit/kprobe/kretprobe).
    pub hooks: Vec<String>,
    /// tracer_common::layout bits resolved from BTF.
    pub layout: u32,
    /// The iter/task_vma snapshot works.
    pub snapshot: bool,
}

/// How a rule is checked on a kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Live,
    /// Live hooks unavailable; VMA snapshots still check it.
    SnapshotOnly,
    /// The kernel lacks what the rule is about (e.g. no per-VMA locks before 6.4).
    NotApplicable(String),
    /// Applicable, but nothing that could check it is available here.
    Unavailable(String),
    NotImplemented,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Live => write!(f, "checked live"),
            Status::SnapshotOnly => write!(f, "checked by snapshot only"),
            Status::NotApplicable(w) => write!(f, "not applicable: {w}"),
            Status::Unavailable(w) => write!(f, "cannot be checked here: {w}"),
            Status::NotImplemented => write!(f, "not implemented yet"),
        }
    }
}

impl Rule {
    pub fn status(&self, a: &Availability) -> Status {
        if !self.implemented {
            return Status::NotImplemented;
        }
        if self.layout & layout::VMA_SEQ != 0 && a.layout & layout::VMA_SEQ == 0 {
            return Status::NotApplicable("this kernel has no per-VMA locks (vm_lock_seq, CONFIG_PER_VMA_LOCK)".into());
        }
        if self.layout & layout::WALK != 0 && a.layout & layout::WALK == 0 {
            return Status::NotApplicable("this kernel's mm_walk_ops has no walk_lock".into());
        }
        if self.layout & layout::VMA_PREPARE != 0 && a.layout & layout::VMA_PREPARE == 0 {
            return Status::NotApplicable("this kernel has no struct vma_prepare".into());
        }
        let tp_ok = a.tracepoints || !self.needs.iter().any(|n| n.starts_with("tracepoint:"));
        let live = if self.live_hooks.is_empty() {
            (self.id == MMAP_LOCK_BALANCE || self.id == LOCK_ORDER) && a.tracepoints
        } else {
            tp_ok && self.live_hooks.iter().any(|h| a.hooks.iter().any(|x| x == h))
        };
        if live {
            Status::Live
        } else if self.by_snapshot && a.snapshot {
            Status::SnapshotOnly
        } else if self.live_hooks.is_empty() && !self.by_snapshot {
            Status::Unavailable("needs the mmap_lock tracepoints".into())
        } else {
            let mut what: Vec<String> = self.live_hooks.iter().map(|h| format!("a hook on {h}")).collect();
            if self.by_snapshot {
                what.push("iter/task_vma snapshots".into());
            }
            Status::Unavailable(format!("needs {}", what.join(" or ")))
        }
    }
}

/// The catalogued rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// Id of the one rule the mmap_lock state machine checks.
pub const MMAP_LOCK_BALANCE: &str = "mmap-lock-balance";
pub const VMA_WRITE_NEEDS_MMAP_WRITE: &str = "vma-write-needs-mmap-write";
pub const PAGEWALK_LOCK_MODE: &str = "pagewalk-lock-mode";
pub const PAGEWALK_VMA_WRITE: &str = "pagewalk-vma-write";
pub const VM_FLAGS_LOCKED: &str = "vm-flags-locked";
pub const VMA_PREPARE_PRELOCKED: &str = "vma-prepare-prelocked";
pub const NEW_VMA_LOCKED: &str = "new-vma-locked";
pub const NO_MMAP_UNDER_VMA_READ: &str = "no-mmap-under-vma-read";
pub const LOCK_ORDER: &str = "lock-order";

/// The lock classes the lock-order rule sees on a kernel with these hooks, and for each class
/// how (or why not). Hook names are the functions as `Availability::hooks` lists them.
pub fn lock_order_classes(a: &Availability) -> Vec<(&'static str, String)> {
    let has = |h: &str| a.hooks.iter().any(|x| x == h);
    let tp = if a.tracepoints { "mmap_lock tracepoints".to_string() } else { "unavailable: needs the mmap_lock tracepoints".into() };
    let vma_write = if a.layout & layout::VMA_SEQ == 0 {
        "not applicable: no per-VMA locks".to_string()
    } else if has("__vma_start_write") {
        "write: hook on __vma_start_write".into()
    } else {
        "write: unavailable (no hook on __vma_start_write: inline before 6.13, or no function hooks)".into()
    };
    let vma_read = if a.layout & layout::VMA_SEQ == 0 {
        "".to_string()
    } else if has("lock_vma_under_rcu") {
        "; read: hook on lock_vma_under_rcu (seen when mmap_lock is taken under it)".into()
    } else {
        "; read: unavailable (no hook on lock_vma_under_rcu)".into()
    };
    let rwsem = if a.layout & layout::VMA_SEQ == 0 {
        "not applicable: its lock addresses are learned from the VMAs the per-VMA-lock hooks and snapshots see".to_string()
    } else if has("down_write") && has("up_write") {
        "down_*/up_* hooks, filtered in the kernel by the addresses learned from VMAs".to_string()
    } else {
        "unavailable: needs function hooks on down_read/down_write/up_read/up_write (fentry or kprobe)".into()
    };
    vec![
        ("mmap_lock", tp),
        ("vma_lock", format!("{vma_write}{vma_read}")),
        ("i_mmap_rwsem", rwsem.clone()),
        ("anon_vma", rwsem),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn catalogue_has_the_nine_rules_with_unique_ids() {
        assert_eq!(rule(LOCK_ORDER).map(|r| r.implemented), Some(true));
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
    fn every_rule_is_implemented() {
        let pending: Vec<_> = RULES.iter().filter(|r| !r.implemented).map(|r| r.id).collect();
        assert!(pending.is_empty(), "{pending:?}");
    }

    #[test]
    fn lock_order_classes_follow_the_hooks() {
        let seq = layout::VMA_SEQ;
        // Host 6.18: tracepoints only, no function hooks.
        let host = lock_order_classes(&avail(&[], seq, true));
        assert_eq!(host[0], ("mmap_lock", "mmap_lock tracepoints".to_string()));
        assert!(host[1].1.starts_with("write: unavailable"), "{:?}", host[1]);
        assert!(host[2].1.starts_with("unavailable"), "{:?}", host[2]);
        let guest = lock_order_classes(&avail(&["__vma_start_write", "lock_vma_under_rcu", "down_write", "up_write"], seq, true));
        assert!(guest.iter().all(|(_, how)| !how.contains("unavailable")), "{guest:?}");
        assert!(lock_order_classes(&avail(&[], 0, true))[1].1.starts_with("not applicable"));
    }

    fn avail(hooks: &[&str], layout: u32, snapshot: bool) -> Availability {
        Availability { tracepoints: true, hooks: hooks.iter().map(|s| s.to_string()).collect(), layout, snapshot }
    }

    #[test]
    fn status_follows_hooks_layout_and_snapshots() {
        let r = rule(VMA_WRITE_NEEDS_MMAP_WRITE).unwrap();
        let seq = layout::VMA_SEQ | layout::WALK;
        assert_eq!(r.status(&avail(&["__vma_start_write"], seq, true)), Status::Live);
        assert_eq!(r.status(&avail(&[], seq, true)), Status::SnapshotOnly);
        assert!(matches!(r.status(&avail(&[], seq, false)), Status::Unavailable(w) if w.contains("__vma_start_write")));
        // 6.1: no per-VMA locks at all.
        assert!(matches!(r.status(&avail(&["__vma_start_write"], 0, true)), Status::NotApplicable(_)));
        let walk = rule(PAGEWALK_LOCK_MODE).unwrap();
        assert_eq!(walk.status(&avail(&["walk_page_vma"], seq, false)), Status::Live);
        assert!(matches!(walk.status(&avail(&["walk_page_vma"], layout::VMA_SEQ, false)), Status::NotApplicable(w) if w.contains("walk_lock")));
        let no_tp = Availability { tracepoints: false, ..avail(&["lock_vma_under_rcu"], seq, false) };
        assert!(matches!(rule(NO_MMAP_UNDER_VMA_READ).unwrap().status(&no_tp), Status::Unavailable(_)));
        assert_eq!(rule(MMAP_LOCK_BALANCE).unwrap().status(&avail(&[], 0, false)), Status::Live);
        assert_eq!(rule(LOCK_ORDER).unwrap().status(&avail(&[], seq, true)), Status::Live);
        let no_tp = Availability { tracepoints: false, ..avail(&[], seq, true) };
        assert!(matches!(rule(LOCK_ORDER).unwrap().status(&no_tp), Status::Unavailable(_)));
    }
}
