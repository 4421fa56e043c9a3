//! `vmalock probe`: which hook families this kernel lets us use, with the exact reason when it
//! refuses, the struct layout resolved from BTF, and which rules can therefore be checked.
//!
//! Every verdict here comes from really loading (and where harmless attaching) a do-nothing
//! program of that type, never from a kernel version number.

use std::{collections::BTreeMap, io::Read as _, path::Path};

use anyhow::{Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, FEntry, Iter, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use serde::Serialize;

use crate::{btf::KernelBtf, hooks::HookState, loader::{self, EBPF_OBJECT}, model::{RULES, lock_order_classes}, tpformat};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Family {
    /// "tp_btf", "tracepoint", "raw_tp", "fentry", "kprobe", "iter".
    pub name: String,
    pub works: bool,
    /// What was tried and, when refused, the errno and message.
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub kernel_release: String,
    pub families: Vec<Family>,
    /// "struct.member" → byte offset, or null where this kernel has no such member.
    pub layout: BTreeMap<String, Option<u32>>,
    /// Functions later probes target → present in BTF.
    pub functions: BTreeMap<String, bool>,
    /// `enum page_walk_lock` as this kernel defines it (absent before per-VMA locks).
    pub page_walk_lock: Option<Vec<(String, u32)>>,
    /// The VMA rules' function hooks as the tracer attaches them here (fentry/fexit, else
    /// kprobe/kretprobe), or why not.
    pub hooks: BTreeMap<String, HookState>,
    /// VMA snapshots as the tracer runs them here.
    pub snapshot: String,
    /// Layout groups the tracer could not resolve from BTF, and the member missing.
    pub layout_missing: Vec<(String, String)>,
    /// rule id → how it can be checked here.
    pub rules: BTreeMap<String, String>,
    /// lock class → how lock-order sees it here ("unavailable: …" when it does not).
    pub lock_order_classes: BTreeMap<String, String>,
}

impl Capabilities {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// Struct members the probes read now or will read (the VMA-lock rules), by name.
const LAYOUT: &[(&str, &str)] = &[
    ("task_struct", "start_time"),
    ("task_struct", "tgid"),
    ("mm_struct", "mm_lock_seq"),
    ("mm_struct", "mm_lock_seq.sequence"),
    ("vm_area_struct", "vm_mm"),
    ("vm_area_struct", "vm_flags"),
    ("vm_area_struct", "vm_lock_seq"),
    ("vm_area_struct", "vm_refcnt"),
    ("vm_area_struct", "vm_lock"),
    ("vm_area_struct", "vm_page_prot"),
    ("vm_area_struct", "vm_userfaultfd_ctx"),
    ("mm_walk_ops", "walk_lock"),
];

/// Functions the VMA-lock, page-walk and VMA-change probes attach to.
const FUNCTIONS: &[&str] = &[
    "__vma_start_write",
    "walk_page_range",
    "walk_page_range_mm",
    "walk_page_vma",
    "walk_page_range_vma",
    "walk_page_mapping",
    "vma_prepare",
    "do_brk_flags",
    "_install_special_mapping",
    "__mmap_region",
    "mmap_region",
    "vma_link",
    "ksm_add_vma",
    "mprotect_fixup",
    "mlock_fixup",
    "vma_modify_flags",
    "madvise_vma_behavior",
    "madvise_update_vma",
    "mbind_range",
    "userfaultfd_register",
    "userfaultfd_register_range",
    "lock_vma_under_rcu",
];

/// The errno inside an aya error, wherever in the chain it sits.
pub fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ProgramError::LoadError { io_error, .. }) = err.downcast_ref::<ProgramError>() {
            return io_error.raw_os_error();
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        cur = err.source();
    }
    None
}

/// `EPERM` etc. for the errnos BPF loading and attaching return.
pub fn errno_name(n: i32) -> String {
    let name = match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::E2BIG => "E2BIG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBADF => "EBADF",
        524 => "ENOTSUPP",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}

fn outcome(name: &str, tried: &str, r: Result<(), ProgramError>) -> Family {
    match r {
        Ok(()) => Family { name: name.into(), works: true, detail: format!("{tried}: ok") },
        Err(e) => {
            let errno = errno_of(&e).map(|n| format!("{} ", errno_name(n))).unwrap_or_default();
            // The verifier log of a 2-instruction program is noise; keep the first line.
            let msg = e.to_string();
            let msg = msg.lines().next().unwrap_or_default();
            Family { name: name.into(), works: false, detail: format!("{tried}: refused: {errno}({msg})") }
        }
    }
}

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProgramError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name).ok_or(ProgramError::NotLoaded)?.try_into()
}

/// Probes the running kernel. Needs root.
pub fn probe() -> Result<Capabilities> {
    crate::loader::preflight()?;
    let kbtf = KernelBtf::open()?;
    let btf = Btf::from_sys_fs().map_err(|e| anyhow!("reading kernel BTF: {e}"))?;
    let tracefs = tpformat::tracefs()?;
    let tp_layout = tpformat::mmap_lock_layout(&tracefs).unwrap_or(0);
    let start_time = kbtf.required_offset("task_struct", "start_time")? as u64;
    let write_arg = crate::loader::tp_btf_write_arg(&kbtf).unwrap_or(0);
    let acquired_prog = if write_arg == tracer_common::tp_btf_args::WRITE_AFTER_MEMCG_PATH {
        "btf_mmap_acquired_memcg"
    } else {
        "btf_mmap_acquired"
    };
    let mut ebpf = EbpfLoader::new()
        .override_global("OFF_TASK_START_TIME", &start_time, true)
        .override_global("TP_LAYOUT", &tp_layout, true)
        .load(EBPF_OBJECT)
        .map_err(|e| anyhow!("loading the eBPF object failed: {e}"))?;

    let mut families = Vec::new();
    // Each probe detaches at once. While attached the programs only bump counters: the CONFIG
    // map is zeroed, and a send mask of 0 sends nothing to the (unread) ring buffer.
    families.push(outcome("tp_btf", "tp_btf mmap_lock_acquire_returned", (|| {
        let p: &mut BtfTracePoint = prog(&mut ebpf, acquired_prog)?;
        p.load("mmap_lock_acquire_returned", &btf)?;
        let id = p.attach()?;
        p.detach(id)
    })()));
    families.push(outcome("tracepoint", "tracepoint mmap_lock:mmap_lock_acquire_returned", (|| {
        let p: &mut TracePoint = prog(&mut ebpf, "tp_mmap_acquired")?;
        p.load()?;
        let id = p.attach("mmap_lock", "mmap_lock_acquire_returned")?;
        p.detach(id)
    })()));
    families.push(outcome("raw_tp", "raw_tp mmap_lock_released", (|| {
        let p: &mut RawTracePoint = prog(&mut ebpf, "cap_raw_tp")?;
        p.load()?;
        let id = p.attach("mmap_lock_released")?;
        p.detach(id)
    })()));
    // fentry/fexit share the trampoline machinery: load is where a kernel without it says no.
    let fentry_target = ["__vma_start_write", "walk_page_range", "do_exit"]
        .into_iter()
        .find(|f| kbtf.has_function(f))
        .unwrap_or("do_exit");
    families.push(outcome("fentry", &format!("fentry {fentry_target}"), (|| {
        let p: &mut FEntry = prog(&mut ebpf, "cap_fentry")?;
        p.load(fentry_target, &btf)?;
        let id = p.attach()?;
        p.detach(id)
    })()));
    families.push(kprobe_family(&mut ebpf));
    families.push(outcome("iter", "iter/task_vma", (|| {
        let p: &mut Iter = prog(&mut ebpf, "cap_iter_task_vma")?;
        p.load("task_vma", &btf)?;
        let id = p.attach()?;
        let link = p.take_link(id)?;
        let mut file = link.into_file().map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))?;
        let mut sink = Vec::new();
        file.read_to_end(&mut sink).map_err(ProgramError::IOError)?;
        Ok(())
    })()));
    drop(ebpf);

    let layout = LAYOUT
        .iter()
        .map(|(s, m)| (format!("{s}.{m}"), kbtf.member_offset(s, m).ok().flatten()))
        .collect();
    let functions = FUNCTIONS.iter().map(|f| (f.to_string(), kbtf.has_function(f))).collect();
    // The tracer's own choice, exactly as a run makes it (events stay paused; dropped at once).
    let tracer = loader::Tracer::load(&loader::Options { ring_bytes: 1 << 16, force_tracepoint: false, snapshot_ms: 1000, every_hook: true }, &kbtf)?;
    let attached = tracer.attached.clone();
    drop(tracer);
    let availability = attached.availability();
    Ok(Capabilities {
        kernel_release: kernel_release(),
        families,
        layout,
        functions,
        page_walk_lock: kbtf.enum_values("page_walk_lock"),
        hooks: attached.functions,
        snapshot: attached.snapshot,
        layout_missing: attached.layout_missing,
        rules: RULES.iter().map(|r| (r.id.to_string(), r.status(&availability).to_string())).collect(),
        lock_order_classes: lock_order_classes(&availability).into_iter().map(|(c, how)| (c.to_string(), how)).collect(),
    })
}

fn kprobe_family(ebpf: &mut Ebpf) -> Family {
    // Without CONFIG_KPROBES the program type still loads; attaching is what fails, and the
    // kprobe PMU is simply absent. Say that plainly rather than a bare ENOENT.
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe");
    let mut fam = outcome("kprobe", "kprobe do_exit", (|| {
        let p: &mut KProbe = prog(ebpf, "cap_kprobe")?;
        p.load()?;
        let id = p.attach("do_exit", 0)?;
        p.detach(id)
    })());
    if !fam.works && !pmu.exists() {
        fam.detail.push_str("; /sys/bus/event_source/devices/kprobe is absent: kernel built without CONFIG_KPROBES");
    }
    fam
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The human report `vmalock probe` prints.
pub fn render(caps: &Capabilities) -> String {
    let mut out = format!("kernel {}\n\nhook families:\n", caps.kernel_release);
    for f in &caps.families {
        out += &format!("  {:<11} {:<8} {}\n", f.name, if f.works { "works" } else { "REFUSED" }, f.detail);
    }
    out += "\nlayout (from /sys/kernel/btf/vmlinux, by name):\n";
    for (k, v) in &caps.layout {
        match v {
            Some(off) => out += &format!("  {k:<38} @{off}\n"),
            None => out += &format!("  {k:<38} absent\n"),
        }
    }
    match &caps.page_walk_lock {
        Some(vals) => {
            let v: Vec<String> = vals.iter().map(|(n, v)| format!("{n}={v}")).collect();
            out += &format!("  enum page_walk_lock: {}\n", v.join(" "));
        }
        None => out += "  enum page_walk_lock: absent (no per-VMA page-walk locking)\n",
    }
    for (group, why) in &caps.layout_missing {
        out += &format!("  unresolved: {group}: {why}\n");
    }
    out += "\nfunctions (BTF):\n";
    for (f, present) in &caps.functions {
        out += &format!("  {f:<28} {}\n", if *present { "present" } else { "absent" });
    }
    out += "\nVMA-rule hooks (as a run attaches them):\n";
    for (f, state) in &caps.hooks {
        match state {
            HookState::Attached(family) => out += &format!("  {f:<28} {family}\n"),
            HookState::Unavailable(why) => out += &format!("  {f:<28} unavailable: {why}\n"),
        }
    }
    out += &format!("  VMA snapshots                {}\n", caps.snapshot);
    out += "\nrules:\n";
    for (r, s) in &caps.rules {
        out += &format!("  {r:<28} {s}\n");
    }
    out += "\nlock-order classes:\n";
    for (c, how) in &caps.lock_order_classes {
        out += &format!("  {c:<28} {how}\n");
    }
    out
}
