//! The function hooks of the VMA rules: which kernel function each serves, and the program pair
//! (fentry/fexit first, kprobe/kretprobe as the fallback) that can watch it. Attaching picks the
//! first family this kernel accepts, per hook; a function that is missing, inlined or refused
//! degrades that one hook with the reason, never the run.

use std::collections::BTreeMap;

use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe, ProgramError},
};

use crate::{btf::KernelBtf, capability::{errno_name, errno_of}};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum At {
    Entry,
    Exit,
}

pub struct FnHook {
    /// The kernel function.
    pub func: &'static str,
    pub at: At,
    /// fentry (Entry) or fexit (Exit) program.
    pub trampoline: &'static str,
    /// kprobe / kretprobe program, if the hook can do without the arguments at exit.
    pub probe: Option<&'static str>,
    /// What the hook is for (capability report).
    pub role: &'static str,
    /// Where the programs find the VMA in the arguments, checked against BTF.
    pub vma_arg: Option<VmaArg>,
    /// The return half of an entry/return pair: reported as `func:return`, attached only where
    /// the entry half is.
    pub returns_of_entry: bool,
}

/// Where a hook's programs read the VMA.
#[derive(Clone, Copy)]
pub enum VmaArg {
    /// Argument N is the `struct vm_area_struct *`.
    Ptr(usize),
    /// Argument N is a `struct madvise_behavior *`, whose `vma` member is the VMA.
    InMadviseBehavior(usize),
}

impl VmaArg {
    /// Why this kernel's prototype does not match what the programs read, if it does not.
    fn mismatch(self, kbtf: &KernelBtf, func: &str) -> Option<String> {
        match self {
            VmaArg::Ptr(i) => (kbtf.param_struct(func, i).as_deref() != Some("vm_area_struct"))
                .then(|| format!("argument {i} is not a struct vm_area_struct * on this kernel")),
            VmaArg::InMadviseBehavior(i) => {
                if kbtf.param_struct(func, i).as_deref() != Some("madvise_behavior") {
                    Some(format!("argument {i} is not a struct madvise_behavior * on this kernel"))
                } else if !matches!(kbtf.member_offset("madvise_behavior", "vma"), Ok(Some(_))) {
                    Some("struct madvise_behavior has no member vma on this kernel".into())
                } else {
                    None
                }
            }
        }
    }
}

impl FnHook {
    /// The key this hook is reported under.
    pub fn key(&self) -> String {
        if self.returns_of_entry { format!("{}:return", self.func) } else { self.func.to_string() }
    }
}

macro_rules! hook {
    ($func:literal, $at:ident, $tramp:literal, $probe:expr, $role:literal) => {
        FnHook { func: $func, at: At::$at, trampoline: $tramp, probe: $probe, role: $role, vma_arg: None, returns_of_entry: false }
    };
}

/// A VMA modifier: its entry stashes the VMA's protected fields, its return compares them.
macro_rules! modifier {
    ($func:literal, $vma:literal, $fentry:literal, $fexit:literal, $kprobe:literal, $kretprobe:literal) => {
        modifier!($func, VmaArg::Ptr($vma), $fentry, $fexit, $kprobe, $kretprobe)
    };
    ($func:literal, $vma:expr, $fentry:literal, $fexit:literal, $kprobe:literal, $kretprobe:literal) => {
        [
            FnHook { func: $func, at: At::Entry, trampoline: $fentry, probe: Some($kprobe), role: "VMA modifier (entry)", vma_arg: Some($vma), returns_of_entry: false },
            FnHook { func: $func, at: At::Exit, trampoline: $fexit, probe: Some($kretprobe), role: "VMA modifier (return)", vma_arg: None, returns_of_entry: true },
        ]
    };
}

/// The modifiers whose changes to a VMA's protected fields are checked at their return. A
/// function may have several forms (its prototype changed between kernels): the first whose
/// arguments match this kernel is attached.
pub const MODIFIERS: &[[FnHook; 2]] = &[
    modifier!("mprotect_fixup", 2, "mprotect_fixup_fentry", "mprotect_fixup_fexit", "mprotect_fixup_kprobe", "mprotect_fixup_kretprobe"),
    modifier!("mlock_fixup", 1, "mlock_fixup_fentry", "mlock_fixup_fexit", "mlock_fixup_kprobe", "mlock_fixup_kretprobe"),
    modifier!("mbind_range", 1, "mbind_range_fentry", "mbind_range_fexit", "mbind_range_kprobe", "mbind_range_kretprobe"),
    // madvise's vm_flags changes (MADV_HUGEPAGE, DONTFORK, ...) (mm/madvise.c). Up to 6.15:
    // (vma, prev, start, end, new_flags, anon_name). 6.16+: (new_flags, madv_behavior), the VMA
    // in madv_behavior->vma, where the VMA vma_modify returned is left for the return half.
    modifier!("madvise_update_vma", 0, "madvise_update_vma_fentry", "madvise_update_vma_fexit", "madvise_update_vma_kprobe", "madvise_update_vma_kretprobe"),
    modifier!("madvise_update_vma", VmaArg::InMadviseBehavior(1), "madvise_behavior_fentry", "madvise_update_vma_fexit", "madvise_behavior_kprobe", "madvise_update_vma_kretprobe"),
    // UFFDIO_REGISTER: vm_flags and vm_userfaultfd_ctx of each VMA in the range (mm/userfaultfd.c).
    modifier!("userfaultfd_register_range", 1, "uffd_register_fentry", "uffd_register_fexit", "uffd_register_kprobe", "uffd_register_kretprobe"),
];

pub const FN_HOOKS: &[FnHook] = &[
    hook!("__vma_start_write", Entry, "vma_start_write_fentry", Some("vma_start_write_kprobe"), "VMA write lock (6.13+)"),
    hook!("walk_page_range", Entry, "walk_page_range_fentry", Some("walk_page_range_kprobe"), "page walk"),
    hook!("walk_page_range_mm", Entry, "walk_page_range_mm_fentry", Some("walk_page_range_mm_kprobe"), "page walk"),
    hook!("walk_page_vma", Entry, "walk_page_vma_fentry", Some("walk_page_vma_kprobe"), "page walk"),
    hook!("walk_page_range_vma", Entry, "walk_page_range_vma_fentry", Some("walk_page_range_vma_kprobe"), "page walk"),
    hook!("walk_page_range_mm_unsafe", Entry, "walk_page_range_mm_unsafe_fentry", Some("walk_page_range_mm_unsafe_kprobe"), "page walk (7.x; what walk_page_range wraps)"),
    hook!("walk_page_range_vma_unsafe", Entry, "walk_page_range_vma_unsafe_fentry", Some("walk_page_range_vma_unsafe_kprobe"), "page walk (7.x; what walk_page_range_vma wraps)"),
    hook!("walk_page_mapping", Entry, "walk_page_mapping_fentry", Some("walk_page_mapping_kprobe"), "page walk"),
    hook!("__walk_page_range", Entry, "walk_step_fentry", Some("walk_step_kprobe"), "per-VMA step of a page walk"),
    hook!("vma_prepare", Entry, "vma_prepare_fentry", Some("vma_prepare_kprobe"), "VMA change (merge, split, expand)"),
    hook!("vma_link", Exit, "vma_link_fexit", None, "new VMA inserted"),
    hook!("_install_special_mapping", Exit, "install_special_fexit", Some("install_special_kretprobe"), "new VMA inserted"),
    FnHook { func: "ksm_add_vma", at: At::Entry, trampoline: "ksm_add_vma_fentry", probe: Some("ksm_add_vma_kprobe"), role: "VMA just stored by mmap_region / do_brk_flags", vma_arg: Some(VmaArg::Ptr(0)), returns_of_entry: false },
    hook!("down_read_trylock", Entry, "down_read_trylock_fentry", Some("down_read_trylock_kprobe"), "tells an mmap_lock trylock under a VMA read lock from a blocking lock"),
    hook!("down_write_trylock", Entry, "down_write_trylock_fentry", Some("down_write_trylock_kprobe"), "tells an mmap_lock trylock under a VMA read lock from a blocking lock"),
    hook!("down_read", Entry, "down_read_fentry", Some("down_read_kprobe"), "lock-order: i_mmap_rwsem / anon_vma / i_rwsem taken for read"),
    hook!("down_write", Entry, "down_write_fentry", Some("down_write_kprobe"), "lock-order: i_mmap_rwsem / anon_vma / i_rwsem taken for write"),
    hook!("up_read", Entry, "up_read_fentry", Some("up_read_kprobe"), "lock-order: watched rwsem released (read)"),
    hook!("up_write", Entry, "up_write_fentry", Some("up_write_kprobe"), "lock-order: watched rwsem released (write)"),
    hook!("__vm_area_free", Entry, "vm_area_free_fentry", Some("vm_area_free_kprobe"), "VMA freed: its vm_lock is forgotten before it is recycled (6.4-6.12, inline vma_start_write)"),
    FnHook { func: "down_read_trylock", at: At::Exit, trampoline: "down_read_trylock_fexit", probe: Some("down_read_trylock_kretprobe"), role: "lock-order: trylock of a watched rwsem returned", vma_arg: None, returns_of_entry: true },
    FnHook { func: "down_write_trylock", at: At::Exit, trampoline: "down_write_trylock_fexit", probe: Some("down_write_trylock_kretprobe"), role: "lock-order: trylock of a watched rwsem returned", vma_arg: None, returns_of_entry: true },
    hook!("lock_vma_under_rcu", Exit, "lock_vma_fexit", Some("lock_vma_kretprobe"), "per-VMA read lock taken"),
    hook!("vma_refcount_put", Entry, "vma_refcount_put_fentry", Some("vma_refcount_put_kprobe"), "per-VMA read lock dropped (6.15+)"),
    hook!("handle_mm_fault", Exit, "handle_mm_fault_fexit", Some("handle_mm_fault_kretprobe"), "end of a fault: per-VMA read lock dropped (inline vma_end_read)"),
    // Functions that may end the per-VMA read lock they just took (inline vma_end_read) and
    // take mmap_lock for read next: a hold seen inside them is not believed at that attempt.
    hook!("madvise_lock", Entry, "madvise_lock_fentry", Some("madvise_lock_kprobe"), "per-VMA read lock may be dropped unseen before mmap_read_lock (mm/madvise.c try_vma_read_lock, 6.16+)"),
    FnHook { func: "madvise_lock", at: At::Exit, trampoline: "madvise_lock_fexit", probe: Some("madvise_lock_kretprobe"), role: "end of madvise_lock", vma_arg: None, returns_of_entry: true },
    hook!("uffd_lock_vma", Entry, "uffd_lock_vma_fentry", Some("uffd_lock_vma_kprobe"), "per-VMA read lock may be dropped unseen before mmap_read_lock (mm/userfaultfd.c)"),
    FnHook { func: "uffd_lock_vma", at: At::Exit, trampoline: "uffd_lock_vma_fexit", probe: Some("uffd_lock_vma_kretprobe"), role: "end of uffd_lock_vma", vma_arg: None, returns_of_entry: true },
];

/// Wrappers whose whole work is a call to another hooked function on kernels that have it
/// (mm/pagewalk.c: walk_page_range → walk_page_range_mm[_unsafe], walk_page_range_vma →
/// walk_page_range_vma_unsafe): hooking both would report one walk twice.
pub const WRAPPED_BY: &[(&str, &[&str])] = &[
    ("walk_page_range", &["walk_page_range_mm_unsafe", "walk_page_range_mm"]),
    ("walk_page_range_vma", &["walk_page_range_vma_unsafe"]),
];

/// True when `func` only wraps another function this kernel has (see [`WRAPPED_BY`]).
pub fn is_wrapper(kbtf: &KernelBtf, func: &str) -> bool {
    WRAPPED_BY.iter().any(|(w, inner)| *w == func && inner.iter().any(|i| kbtf.has_function(i)))
}

/// How a function hook ended up: attached with a family, or why not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HookState {
    /// "fentry", "fexit", "kprobe" or "kretprobe".
    Attached(String),
    /// Why not (function absent or inlined, or both families refused, with errnos).
    Unavailable(String),
}

fn why(e: &ProgramError) -> String {
    let errno = errno_of(e).map(|n| format!("{} ", errno_name(n))).unwrap_or_default();
    let msg = e.to_string();
    format!("{errno}({})", msg.lines().next().unwrap_or_default())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProgramError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name).ok_or(ProgramError::NotLoaded)?.try_into()
}

// A program whose attach fails is unloaded again: only attached programs stay loaded, so
// `Tracer::missed` (one syscall per loaded program at every drain) reads no program that cannot
// run. Kprobe programs load on kernels without kprobes and only their attach fails.
fn attach_trampoline(ebpf: &mut Ebpf, h: &FnHook, btf: &Btf) -> Result<(), ProgramError> {
    match h.at {
        At::Entry => {
            let p: &mut FEntry = program(ebpf, h.trampoline)?;
            p.load(h.func, btf)?;
            p.attach().map(drop).inspect_err(|_| drop(p.unload()))
        }
        At::Exit => {
            let p: &mut FExit = program(ebpf, h.trampoline)?;
            p.load(h.func, btf)?;
            p.attach().map(drop).inspect_err(|_| drop(p.unload()))
        }
    }
}

fn attach_probe(ebpf: &mut Ebpf, h: &FnHook, name: &str) -> Result<(), ProgramError> {
    let p: &mut KProbe = program(ebpf, name)?;
    p.load()?;
    p.attach(h.func, 0).map(drop).inspect_err(|_| drop(p.unload()))
}

/// Attaches every function hook it can; returns func → state. `wanted` filters by function name.
pub fn attach_all(ebpf: &mut Ebpf, kbtf: &KernelBtf, btf: &Btf, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, HookState> {
    attach(ebpf, kbtf, btf, FN_HOOKS.iter().filter(|h| wanted(h.func)))
}

/// Attaches the modifiers' entry/return pairs: a return half only where its entry is attached.
pub fn attach_modifiers(ebpf: &mut Ebpf, kbtf: &KernelBtf, btf: &Btf) -> BTreeMap<String, HookState> {
    let mut out: BTreeMap<String, HookState> = BTreeMap::new();
    for [entry, ret] in MODIFIERS {
        let earlier = out.get(entry.func).cloned();
        if matches!(earlier, Some(HookState::Attached(_))) {
            continue; // another form of this function is attached
        }
        let mut e = attach(ebpf, kbtf, btf, std::iter::once(entry));
        let entry_ok = matches!(e.get(entry.func), Some(HookState::Attached(_)));
        // No form attached yet: say why for each, so the report shows every prototype tried.
        if let (Some(HookState::Unavailable(before)), Some(HookState::Unavailable(now))) = (&earlier, e.get_mut(entry.func))
            && before != now
        {
            *now = format!("{before}; nor the other form: {now}");
        }
        out.extend(e);
        if entry_ok {
            out.extend(attach(ebpf, kbtf, btf, std::iter::once(ret)));
        }
    }
    out
}

fn attach<'a>(ebpf: &mut Ebpf, kbtf: &KernelBtf, btf: &Btf, hooks: impl Iterator<Item = &'a FnHook>) -> BTreeMap<String, HookState> {
    let mut out = BTreeMap::new();
    for h in hooks {
        let mismatch = h.vma_arg.and_then(|a| a.mismatch(kbtf, h.func));
        let state = if !kbtf.has_function(h.func) {
            HookState::Unavailable("not in this kernel's BTF (absent, renamed or inlined)".into())
        } else if let Some(why) = mismatch {
            HookState::Unavailable(why)
        } else {
            let (tramp, probe) = match h.at {
                At::Entry => ("fentry", "kprobe"),
                At::Exit => ("fexit", "kretprobe"),
            };
            let t = std::time::Instant::now();
            let r = attach_trampoline(ebpf, h, btf);
            log::debug!("start-up: {tramp} {} ({}) in {} ms", h.key(), h.role, t.elapsed().as_millis());
            match r {
                Ok(()) => HookState::Attached(tramp.into()),
                Err(e1) => match h.probe {
                    None => HookState::Unavailable(format!("{tramp} refused: {}; a {probe} cannot see this hook's arguments", why(&e1))),
                    Some(name) => match attach_probe(ebpf, h, name) {
                        Ok(()) => HookState::Attached(probe.into()),
                        Err(e2) => HookState::Unavailable(format!("{tramp} refused: {}; {probe} refused: {}", why(&e1), why(&e2))),
                    },
                },
            }
        };
        if let HookState::Unavailable(reason) = &state {
            log::info!("hook {} ({}) unavailable: {reason}", h.key(), h.role);
        }
        out.insert(h.key(), state);
    }
    out
}
