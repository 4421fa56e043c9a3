//! Kernel struct layouts for the eBPF side, resolved by name from BTF (tracer_common::Layout).
//!
//! Each group of members is all-or-nothing: a group whose members are not all found on this
//! kernel stays unknown (its `known` bit clear), and [`Resolved::missing`] says which member was
//! missing, so the capability report can name exactly what this kernel lacks.

use anyhow::Result;
use tracer_common::{Layout, layout};

use crate::btf::KernelBtf;

pub struct Resolved {
    pub layout: Layout,
    /// (group, why it is unknown) for every group that could not be resolved.
    pub missing: Vec<(&'static str, String)>,
}

/// The first of `paths` that `name` has.
fn first_of(k: &KernelBtf, name: &str, paths: &[&str]) -> Result<Option<u32>, String> {
    for p in paths {
        match k.member_offset(name, p) {
            Ok(Some(off)) => return Ok(Some(off)),
            Ok(None) => {}
            Err(e) => return Err(format!("{e:#}")),
        }
    }
    Ok(None)
}

/// Resolves every member of a group or says which one is missing.
fn group<const N: usize>(k: &KernelBtf, members: [(&str, &[&str]); N]) -> Result<[u32; N], String> {
    let mut out = [0u32; N];
    for (i, (name, paths)) in members.iter().enumerate() {
        match first_of(k, name, paths)? {
            Some(off) => out[i] = off,
            None => return Err(format!("struct {name} has no member {}", paths.join(" / "))),
        }
    }
    Ok(out)
}

fn note(missing: &mut Vec<(&'static str, String)>, group: &'static str, r: Result<(), String>) {
    if let Err(e) = r {
        missing.push((group, e));
    }
}

pub fn resolve(k: &KernelBtf) -> Resolved {
    let mut l = Layout::default();
    let mut missing = Vec::new();

    let r = group(k, [("task_struct", &["pid"][..]), ("task_struct", &["tgid"]), ("task_struct", &["comm"]), ("task_struct", &["mm"])]).map(|[p, t, c, m]| {
        (l.task_pid, l.task_tgid, l.task_comm, l.task_mm) = (p, t, c, m);
        l.known |= layout::TASK;
    });
    note(&mut missing, "task", r);

    // struct rw_semaphore without PREEMPT_RT: `atomic_long_t count; atomic_long_t owner;`.
    let r = group(k, [("mm_struct", &["mmap_lock"][..]), ("rw_semaphore", &["count"]), ("rw_semaphore", &["owner"])]).map(|[m, c, o]| {
        (l.mm_mmap_lock, l.rwsem_count, l.rwsem_owner) = (m, c, o);
        l.known |= layout::MMAP_RWSEM;
    });
    note(&mut missing, "mmap_lock rwsem", r);

    let r = group(k, [("vm_area_struct", &["vm_mm"][..]), ("vm_area_struct", &["vm_start"]), ("vm_area_struct", &["vm_end"]), ("vm_area_struct", &["vm_flags", "__vm_flags", "flags"])])
        .map(|[mm, s, e, f]| {
            (l.vma_mm, l.vma_start, l.vma_end, l.vma_flags) = (mm, s, e, f);
            l.known |= layout::VMA_BASICS;
        });
    note(&mut missing, "vm_area_struct", r);

    // Per-VMA locks (6.4+). mm_lock_seq became a seqcount_t in 6.13 (and in Debian's 6.12).
    let seqcount = k.member_offset("mm_struct", "mm_lock_seq.sequence").ok().flatten();
    let r = group(k, [("vm_area_struct", &["vm_lock_seq"][..]), ("mm_struct", &["mm_lock_seq.sequence", "mm_lock_seq"])]).map(|[v, m]| {
        (l.vma_lock_seq, l.mm_lock_seq) = (v, m);
        l.known |= layout::VMA_SEQ;
        if seqcount.is_some() {
            l.known |= layout::MM_SEQCOUNT;
        }
    });
    note(&mut missing, "per-VMA lock sequence numbers (CONFIG_PER_VMA_LOCK, 6.4+)", r);

    // Readers: vm_refcnt (6.15+) or the vma_lock rwsem (6.4-6.14).
    match group(k, [("vm_area_struct", &["vm_refcnt.refs.counter", "vm_refcnt"][..])]) {
        Ok([off]) => {
            l.vma_refcnt = off;
            l.known |= layout::VMA_REFCNT;
        }
        Err(e1) => {
            let r = group(k, [("vm_area_struct", &["vm_lock"][..]), ("vma_lock", &["lock"])]).map(|[v, lk]| {
                (l.vma_vm_lock, l.vma_lock_rwsem) = (v, lk);
                l.known |= layout::VMA_VM_LOCK;
            });
            if let Err(e2) = r {
                missing.push(("per-VMA read lock state", format!("{e1}; {e2}")));
            }
        }
    }

    for (bit, name, paths) in [
        (layout::VMA_PAGE_PROT, "vm_page_prot", &["vm_page_prot"][..]),
        (layout::VMA_UFFD, "vm_userfaultfd_ctx (CONFIG_USERFAULTFD)", &["vm_userfaultfd_ctx.ctx"]),
        (layout::VMA_POLICY, "vm_policy (CONFIG_NUMA)", &["vm_policy"]),
    ] {
        match first_of(k, "vm_area_struct", paths) {
            Ok(Some(off)) => {
                match bit {
                    layout::VMA_PAGE_PROT => l.vma_page_prot = off,
                    layout::VMA_UFFD => l.vma_uffd_ctx = off,
                    _ => l.vma_policy = off,
                }
                l.known |= bit;
            }
            Ok(None) => missing.push((name, format!("struct vm_area_struct has no member {}", paths[0]))),
            Err(e) => missing.push((name, e)),
        }
    }

    // include/linux/mm.h (7.x): VM_ATOMIC_SET_ALLOWED = VM_MAYBE_GUARD, set by
    // vma_set_atomic_flag() under the mmap *read* lock (madvise_guard_install).
    if let Some(bit) = k.enumerator("VMA_MAYBE_GUARD_BIT") {
        l.vma_unlocked_flags |= 1u64 << bit;
    }

    let r = group(k, [("mm_walk_ops", &["walk_lock"][..]), ("mm_walk", &["ops"]), ("mm_walk", &["mm"]), ("mm_walk", &["vma"])]).map(|[w, o, m, v]| {
        (l.ops_walk_lock, l.walk_ops, l.walk_mm, l.walk_vma) = (w, o, m, v);
        l.known |= layout::WALK;
    });
    note(&mut missing, "page walk lock modes (mm_walk_ops.walk_lock, 6.5+)", r);

    let r = group(k, [("vma_prepare", &["vma"][..]), ("vma_prepare", &["adj_next"]), ("vma_prepare", &["remove"]), ("vma_prepare", &["remove2"])])
        .map(|[v, a, r1, r2]| {
            (l.vp_vma, l.vp_adj_next, l.vp_remove, l.vp_remove2) = (v, a, r1, r2);
            l.known |= layout::VMA_PREPARE;
        });
    note(&mut missing, "struct vma_prepare (6.3+)", r);

    // lock-order: the rwsems reached from a VMA.
    let r = group(k, [
        ("vm_area_struct", &["vm_file"][..]),
        ("file", &["f_mapping"]),
        ("address_space", &["i_mmap_rwsem"]),
        ("file", &["f_inode"]),
        ("inode", &["i_rwsem"]),
    ])
    .map(|[f, m, im, i, ir]| {
        (l.vma_file, l.file_mapping, l.mapping_i_mmap_rwsem, l.file_inode, l.inode_i_rwsem) = (f, m, im, i, ir);
        l.known |= layout::LOCK_FILE;
    });
    note(&mut missing, "file locks for lock-order (vm_file, f_mapping, i_mmap_rwsem, f_inode, i_rwsem)", r);
    let r = group(k, [("vm_area_struct", &["anon_vma"][..]), ("anon_vma", &["root"]), ("anon_vma", &["rwsem"])]).map(|[a, r, s]| {
        (l.vma_anon_vma, l.anon_vma_root, l.anon_vma_rwsem) = (a, r, s);
        l.known |= layout::LOCK_ANON;
    });
    note(&mut missing, "anon_vma lock for lock-order (anon_vma, root, rwsem)", r);

    // madvise_update_vma(new_flags, madv_behavior) (6.16+): the VMA is madv_behavior->vma.
    let r = group(k, [("madvise_behavior", &["vma"][..])]).map(|[v]| {
        l.madv_vma = v;
        l.known |= layout::MADV_BEHAVIOR;
    });
    note(&mut missing, "struct madvise_behavior (6.16+; older kernels pass madvise_update_vma the VMA itself)", r);

    Resolved { layout: l, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_layouts_resolve() {
        let Ok(k) = KernelBtf::open() else {
            eprintln!("SKIP this_kernels_layouts_resolve: no kernel BTF here");
            return;
        };
        let r = resolve(&k);
        // Every group this machine's 6.18 has (see shared notes on its BTF); a group missing here
        // is a resolution bug, not a kernel difference.
        for bit in [layout::TASK, layout::MMAP_RWSEM, layout::VMA_BASICS, layout::VMA_SEQ, layout::MM_SEQCOUNT, layout::VMA_REFCNT, layout::WALK, layout::LOCK_FILE, layout::LOCK_ANON, layout::MADV_BEHAVIOR] {
            assert!(r.layout.known & bit != 0, "layout bit {bit:#x} unresolved: {:?}", r.missing);
        }
        assert_eq!(r.layout.vma_start, 0, "vm_start is the first member of vm_area_struct");
        assert_ne!(r.layout.vma_lock_seq, r.layout.vma_mm);
    }
}
