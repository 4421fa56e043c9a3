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
}

pub const FN_HOOKS: &[FnHook] = &[
    FnHook { func: "__vma_start_write", at: At::Entry, trampoline: "vma_start_write_fentry", probe: Some("vma_start_write_kprobe"), role: "VMA write lock (6.13+)" },
    FnHook { func: "walk_page_range", at: At::Entry, trampoline: "walk_page_range_fentry", probe: Some("walk_page_range_kprobe"), role: "page walk" },
    FnHook { func: "walk_page_range_mm", at: At::Entry, trampoline: "walk_page_range_mm_fentry", probe: Some("walk_page_range_mm_kprobe"), role: "page walk" },
    FnHook { func: "walk_page_vma", at: At::Entry, trampoline: "walk_page_vma_fentry", probe: Some("walk_page_vma_kprobe"), role: "page walk" },
    FnHook { func: "walk_page_range_vma", at: At::Entry, trampoline: "walk_page_range_vma_fentry", probe: Some("walk_page_range_vma_kprobe"), role: "page walk" },
    FnHook { func: "walk_page_range_mm_unsafe", at: At::Entry, trampoline: "walk_page_range_mm_unsafe_fentry", probe: Some("walk_page_range_mm_unsafe_kprobe"), role: "page walk (7.x; what walk_page_range wraps)" },
    FnHook { func: "walk_page_range_vma_unsafe", at: At::Entry, trampoline: "walk_page_range_vma_unsafe_fentry", probe: Some("walk_page_range_vma_unsafe_kprobe"), role: "page walk (7.x; what walk_page_range_vma wraps)" },
    FnHook { func: "walk_page_mapping", at: At::Entry, trampoline: "walk_page_mapping_fentry", probe: Some("walk_page_mapping_kprobe"), role: "page walk" },
    FnHook { func: "__walk_page_range", at: At::Entry, trampoline: "walk_step_fentry", probe: Some("walk_step_kprobe"), role: "per-VMA step of a page walk" },
    FnHook { func: "vma_prepare", at: At::Entry, trampoline: "vma_prepare_fentry", probe: Some("vma_prepare_kprobe"), role: "VMA change (merge, split, expand)" },
    FnHook { func: "vma_link", at: At::Exit, trampoline: "vma_link_fexit", probe: None, role: "new VMA inserted" },
    FnHook { func: "_install_special_mapping", at: At::Exit, trampoline: "install_special_fexit", probe: Some("install_special_kretprobe"), role: "new VMA inserted" },
    FnHook { func: "down_read_trylock", at: At::Entry, trampoline: "down_read_trylock_fentry", probe: Some("down_read_trylock_kprobe"), role: "tells an mmap_lock trylock under a VMA read lock from a blocking lock" },
    FnHook { func: "down_write_trylock", at: At::Entry, trampoline: "down_write_trylock_fentry", probe: Some("down_write_trylock_kprobe"), role: "tells an mmap_lock trylock under a VMA read lock from a blocking lock" },
    FnHook { func: "lock_vma_under_rcu", at: At::Exit, trampoline: "lock_vma_fexit", probe: Some("lock_vma_kretprobe"), role: "per-VMA read lock taken" },
    FnHook { func: "vma_refcount_put", at: At::Entry, trampoline: "vma_refcount_put_fentry", probe: Some("vma_refcount_put_kprobe"), role: "per-VMA read lock dropped (6.15+)" },
    FnHook { func: "handle_mm_fault", at: At::Exit, trampoline: "handle_mm_fault_fexit", probe: Some("handle_mm_fault_kretprobe"), role: "end of a fault: per-VMA read lock dropped (inline vma_end_read)" },
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

fn attach_trampoline(ebpf: &mut Ebpf, h: &FnHook, btf: &Btf) -> Result<(), ProgramError> {
    match h.at {
        At::Entry => {
            let p: &mut FEntry = program(ebpf, h.trampoline)?;
            p.load(h.func, btf)?;
            p.attach().map(drop)
        }
        At::Exit => {
            let p: &mut FExit = program(ebpf, h.trampoline)?;
            p.load(h.func, btf)?;
            p.attach().map(drop)
        }
    }
}

fn attach_probe(ebpf: &mut Ebpf, h: &FnHook, name: &str) -> Result<(), ProgramError> {
    let p: &mut KProbe = program(ebpf, name)?;
    p.load()?;
    p.attach(h.func, 0).map(drop)
}

/// Attaches every function hook it can; returns func → state. `wanted` filters by function name.
pub fn attach_all(ebpf: &mut Ebpf, kbtf: &KernelBtf, btf: &Btf, wanted: impl Fn(&str) -> bool) -> BTreeMap<String, HookState> {
    let mut out = BTreeMap::new();
    for h in FN_HOOKS.iter().filter(|h| wanted(h.func)) {
        let state = if !kbtf.has_function(h.func) {
            HookState::Unavailable("not in this kernel's BTF (absent, renamed or inlined)".into())
        } else {
            let (tramp, probe) = match h.at {
                At::Entry => ("fentry", "kprobe"),
                At::Exit => ("fexit", "kretprobe"),
            };
            match attach_trampoline(ebpf, h, btf) {
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
            log::info!("hook {} ({}) unavailable: {reason}", h.func, h.role);
        }
        out.insert(h.func.to_string(), state);
    }
    out
}
