//! Loads the eBPF object, attaches the mmap_lock and task-exit probes with the best hook family
//! the kernel accepts (tp_btf, else plain tracepoints), and owns everything it created: dropping
//! the [`Tracer`] detaches every link and unloads every program and map.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, Iter, TracePoint},
};
use serde::Serialize;
use tracer_common::{Config, TGID_NONE, counter, kind, layout as lbits, tp_btf_args};

use crate::{
    btf::{ArgKind, KernelBtf},
    event::WalkLock,
    hooks::{self, HookState},
    layout,
    model::Availability,
    tpformat,
};

/// The eBPF object built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What each hook is attached with, for the trace header and the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Attached {
    /// hook name → "tp_btf" / "tracepoint".
    pub hooks: BTreeMap<String, String>,
    /// Why a preferred family was not used, per hook.
    pub fallbacks: BTreeMap<String, String>,
    /// Hooks left unattached on purpose because nothing in this run needs them, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_needed: BTreeMap<String, String>,
    /// Kernel function → how it is hooked, or why it is not (the VMA rules' hooks).
    pub functions: BTreeMap<String, HookState>,
    /// VMA snapshots: "iter/task_vma every N ms", "off", or why they cannot run.
    pub snapshot: String,
    /// tracer_common::layout bits resolved from BTF.
    pub layout_known: u32,
    /// Layout groups this kernel lacks, with the member that is missing.
    pub layout_missing: Vec<(String, String)>,
}

impl Attached {
    /// What the rules can use, for `Rule::status`.
    pub fn availability(&self) -> Availability {
        Availability {
            tracepoints: self.hooks.keys().any(|h| h.starts_with("mmap_lock_")),
            hooks: self.functions.iter().filter(|(_, s)| matches!(s, HookState::Attached(_))).map(|(f, _)| f.clone()).collect(),
            layout: self.layout_known,
            snapshot: self.snapshot.starts_with("iter/task_vma"),
        }
    }
}

pub struct Options {
    /// Ring-buffer size in bytes (a power-of-two multiple of the page size).
    pub ring_bytes: u32,
    /// Use plain tracepoints even where tp_btf works (to test or compare the fallback).
    pub force_tracepoint: bool,
    /// VMA snapshot period in ms; 0 = no snapshots.
    pub snapshot_ms: u64,
    /// Attach every hook even where no rule of a default run reads its events (`record`,
    /// `--all-events`, the capability probe). Otherwise mmap_lock_start_locking is attached
    /// only where a rule needs it: under a per-VMA read lock or a lock-order rwsem.
    pub every_hook: bool,
}

pub struct Tracer {
    ebpf: Ebpf,
    pub attached: Attached,
    /// Wake the reader early once a quarter of the ring is full.
    wakeup_bytes: u64,
    /// Fold balanced mmap_lock pairs in the kernel (`Config::fold`); see [`Tracer::fold_pairs`].
    fold: bool,
    /// `Config::watch`: the per-task lookups whose hooks are attached.
    watch: u32,
    /// `--comm`: only tasks of this name (NUL-padded), on top of the TGID filter.
    comm: Option<[u8; 16]>,
    /// `TP_BTF_WRITE_ARG` as loaded; 0 when tp_btf cannot be used for mmap_lock.
    write_arg: u32,
    /// `Config::hold_epoch`, bumped by [`Tracer::distrust_vma_read_holds`].
    hold_epoch: u32,
    /// The last (start_ns, tgid, send_mask) written to CONFIG.
    configured: (u64, u32, u32),
    /// The loaded iter/task_vma program, when snapshots are on and work.
    snapshots: bool,
    snapshot_round: u32,
    stacks: Option<StackTraceMap<MapData>>,
}

/// How often the reader drains the ring when no early wakeup comes (see `Config::wakeup_bytes`).
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Where `write` sits in the mmap_lock tracepoints' tp_btf arguments on this kernel, checked on
/// all three prototypes (`success` must follow it in acquire_returned).
pub fn tp_btf_write_arg(kbtf: &KernelBtf) -> Result<u32> {
    let mut found = None;
    for tp in ["mmap_lock_start_locking", "mmap_lock_acquire_returned", "mmap_lock_released"] {
        let args = kbtf.tracepoint_args(tp)?;
        let w = args.iter().position(|a| *a == ArgKind::Bool).ok_or_else(|| anyhow!("{tp}: no bool argument in {args:?}"))?;
        if args.first() != Some(&ArgKind::Pointer) {
            bail!("{tp}: first argument is not the mm pointer ({args:?})");
        }
        if tp == "mmap_lock_acquire_returned" && args.get(w + 1) != Some(&ArgKind::Bool) {
            bail!("{tp}: `success` does not follow `write` ({args:?})");
        }
        if found.is_some_and(|f| f != w) {
            bail!("the mmap_lock tracepoints disagree on where `write` is");
        }
        found = Some(w);
    }
    match found.map(|w| w as u32) {
        Some(w @ (tp_btf_args::WRITE_AFTER_MM | tp_btf_args::WRITE_AFTER_MEMCG_PATH)) => Ok(w),
        other => bail!("unknown mmap_lock tracepoint prototype (write at {other:?})"),
    }
}

/// The walk rules are written against upstream's `enum page_walk_lock`; a kernel whose
/// enumerators differ (by name or value) gets no walk hooks rather than wrong verdicts.
fn check_walk_lock_enum(kbtf: &KernelBtf) -> std::result::Result<(), String> {
    let Some(vals) = kbtf.enum_values("page_walk_lock") else {
        return Err("this kernel has no enum page_walk_lock".into());
    };
    for (name, v) in &vals {
        if !WalkLock::KERNEL_ENUM.iter().any(|(n, x)| n == name && x == v) {
            return Err(format!("enum page_walk_lock has {name}={v}, which vmalock does not know"));
        }
    }
    Ok(())
}

/// One sentence saying what is missing when we cannot load BPF programs at all.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "not running as root: vmalock loads eBPF programs and reads kernel tracepoints \
             (needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN). Run it with sudo."
        );
    }
    Ok(())
}

/// A program's name in the object and the tracepoint it serves.
struct Hook {
    /// tp_btf program for the 6.14+ prototype (`write` right after `mm`).
    btf_prog: &'static str,
    /// tp_btf program for the 6.1-6.13 prototype (`memcg_path` before `write`), if different.
    btf_prog_memcg: &'static str,
    tp_prog: &'static str,
    category: &'static str,
    name: &'static str,
}

/// 6.4-6.12: per-VMA locks with a separate `vma->vm_lock` and no out-of-line
/// `__vma_start_write`, so the VMA write lock is seen at its vm_lock's down_write.
fn vma_start_write_is_inline(kbtf: &KernelBtf, known: u32) -> bool {
    known & lbits::VMA_SEQ != 0 && known & lbits::VMA_VM_LOCK != 0 && !kbtf.has_function("__vma_start_write")
}

const HOOKS: &[Hook] = &[
    Hook { btf_prog: "btf_mmap_start", btf_prog_memcg: "btf_mmap_start_memcg", tp_prog: "tp_mmap_start", category: "mmap_lock", name: "mmap_lock_start_locking" },
    Hook { btf_prog: "btf_mmap_acquired", btf_prog_memcg: "btf_mmap_acquired_memcg", tp_prog: "tp_mmap_acquired", category: "mmap_lock", name: "mmap_lock_acquire_returned" },
    Hook { btf_prog: "btf_mmap_released", btf_prog_memcg: "btf_mmap_released_memcg", tp_prog: "tp_mmap_released", category: "mmap_lock", name: "mmap_lock_released" },
    Hook { btf_prog: "btf_task_exit", btf_prog_memcg: "btf_task_exit", tp_prog: "tp_task_exit", category: "sched", name: "sched_process_exit" },
];

impl Tracer {
    /// Loads the object with this kernel's offsets and attaches every hook. Events flow only once
    /// [`start`](Self::start) sets the target.
    pub fn load(opts: &Options, kbtf: &KernelBtf) -> Result<Tracer> {
        preflight()?;
        let start_time = kbtf.required_offset("task_struct", "start_time")? as u64;
        let tp_layout = tpformat::tracefs()
            .and_then(|t| tpformat::mmap_lock_layout(&t))
            .unwrap_or_else(|e| {
                log::warn!("plain-tracepoint fallback unavailable: {e:#}");
                0
            });
        let write_arg = tp_btf_write_arg(kbtf).unwrap_or_else(|e| {
            log::warn!("tp_btf unusable for mmap_lock: {e:#}");
            0
        });
        let mut resolved = layout::resolve(kbtf);
        if let Err(e) = check_walk_lock_enum(kbtf) {
            resolved.layout.known &= !lbits::WALK;
            resolved.missing.push(("page walk lock modes", e));
        }
        let track_vma_read = u32::from(resolved.layout.known & lbits::VMA_SEQ != 0 && kbtf.has_function("lock_vma_under_rcu"));
        // 6.4-6.12: vma_start_write is inline; its down_write of vma->vm_lock->lock is the
        // VMA write lock being taken (include/linux/mm.h), seen through the down_write hook.
        let vm_lock_writes = u32::from(vma_start_write_is_inline(kbtf, resolved.layout.known));
        // Start-up is most of a short run's cost in a TCG guest: each phase's time is logged
        // (RUST_LOG=vmalock=debug) so it is clear which one to make cheaper.
        // Parsed once: the loader's relocations and the tp_btf/fentry attaches share it (the
        // loader would otherwise parse /sys/kernel/btf/vmlinux again).
        let t = std::time::Instant::now();
        let btf = Btf::from_sys_fs().context("reading kernel BTF for tp_btf programs")?;
        log::debug!("start-up: kernel BTF parsed for aya in {} ms", t.elapsed().as_millis());
        let t = std::time::Instant::now();
        let ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFF_TASK_START_TIME", &start_time, true)
            .override_global("TP_LAYOUT", &tp_layout, true)
            .override_global("LAYOUT", &resolved.layout, true)
            .override_global("TRACK_VMA_READ", &track_vma_read, true)
            .override_global("VM_LOCK_WRITES", &vm_lock_writes, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object failed: {e}"))?;
        log::debug!("start-up: eBPF object loaded (maps, relocations) in {} ms", t.elapsed().as_millis());
        let mut tracer = Tracer {
            ebpf,
            attached: Attached::default(),
            wakeup_bytes: u64::from(opts.ring_bytes / 4),
            fold: false,
            watch: 0,
            comm: None,
            write_arg,
            snapshots: false,
            snapshot_round: 0,
            stacks: None,
            hold_epoch: 0,
            configured: (u64::MAX, TGID_NONE, 0),
        };
        tracer.attached.layout_known = resolved.layout.known;
        tracer.attached.layout_missing = resolved.missing.iter().map(|(g, w)| (g.to_string(), w.clone())).collect();
        tracer.pause()?;
        let t = std::time::Instant::now();
        tracer.attach_functions(kbtf, &btf, resolved.layout.known);
        log::debug!("start-up: function hooks loaded and attached in {} ms", t.elapsed().as_millis());
        let t = std::time::Instant::now();
        if vm_lock_writes != 0 {
            let freed = matches!(tracer.attached.functions.get("__vm_area_free"), Some(HookState::Attached(_)));
            let state = match tracer.attached.functions.get("down_write") {
                Some(HookState::Attached(fam)) if freed => {
                    HookState::Attached(format!("inline on this kernel: its down_write of vma->vm_lock->lock, via the down_write hook ({fam})"))
                }
                _ => HookState::Unavailable("inline on this kernel, and the down_write and __vm_area_free hooks that would see its vm_lock are not both attached".into()),
            };
            tracer.attached.functions.insert("vma_start_write".into(), state);
        }
        for hook in HOOKS {
            // start_locking is the hottest hook with nothing to send in a default run unless an
            // attempt can be made under a lock a rule watches (Config::watch).
            if hook.name == "mmap_lock_start_locking" && !opts.every_hook && tracer.watch == 0 {
                tracer.attached.not_needed.insert(
                    hook.name.into(),
                    "no rule of a default run reads it on this kernel (no per-VMA read-lock or lock-order rwsem hooks); record and --all-events attach it".into(),
                );
                continue;
            }
            tracer.attach(hook, &btf, tp_layout, opts.force_tracepoint)?;
        }
        log::debug!("start-up: mmap_lock and exit hooks loaded and attached in {} ms", t.elapsed().as_millis());
        let t = std::time::Instant::now();
        tracer.attached.snapshot = match opts.snapshot_ms {
            0 => "off".into(),
            ms => match tracer.load_snapshots(&btf, resolved.layout.known) {
                Ok(()) => format!("iter/task_vma every {ms} ms"),
                Err(e) => {
                    log::warn!("VMA snapshots unavailable: {e:#}");
                    format!("unavailable: {e:#}")
                }
            },
        };
        log::debug!("start-up: snapshot program loaded and first pass run in {} ms", t.elapsed().as_millis());
        if log::log_enabled!(log::Level::Debug) {
            for (name, prog) in tracer.ebpf.programs() {
                if let Ok(info) = prog.info() {
                    log::debug!(
                        "start-up: program {name}: {} instructions verified, {} bytes translated",
                        info.verified_instruction_count().unwrap_or(0),
                        info.size_translated().unwrap_or(0)
                    );
                }
            }
        }
        tracer.stacks = tracer.ebpf.take_map("STACKS").and_then(|m| StackTraceMap::try_from(m).ok());
        Ok(tracer)
    }

    /// The VMA rules' function hooks, each only where the kernel has what its rules are about.
    fn attach_functions(&mut self, kbtf: &KernelBtf, btf: &Btf, known: u32) {
        let has = |bit| known & bit != 0;
        let wanted = |f: &str| match f {
            // Second pass below: the read-lock hooks only make sense together.
            "handle_mm_fault" | "lock_vma_under_rcu" | "vma_refcount_put" | "madvise_lock" | "uffd_lock_vma" => false,
            f if hooks::is_wrapper(kbtf, f) => false,
            f if f.starts_with("walk_page") || f == "__walk_page_range" => has(lbits::WALK) && has(lbits::VMA_SEQ),
            "vma_prepare" => has(lbits::VMA_PREPARE) && has(lbits::VMA_SEQ),
            // lock-order's rwsem hooks: only where something learns the lock addresses they are
            // filtered by (the VMA hooks and snapshots, all of which need per-VMA locks);
            // elsewhere they would cost every rwsem in the kernel a lookup for nothing.
            "down_read" | "down_write" | "up_read" | "up_write" => {
                has(lbits::VMA_SEQ) && (has(lbits::LOCK_FILE) || has(lbits::LOCK_ANON))
            }
            // Only where vma_start_write is inline and seen through its vm_lock's down_write.
            "__vm_area_free" => vma_start_write_is_inline(kbtf, known),
            // Shared with the VMA rules (trylock under a per-VMA read lock).
            "down_read_trylock" | "down_write_trylock" => has(lbits::VMA_SEQ),
            _ => has(lbits::VMA_SEQ),
        };
        let mut functions = hooks::attach_all(&mut self.ebpf, kbtf, btf, wanted);
        if has(lbits::VMA_SEQ) && has(lbits::VMA_BASICS) {
            functions.extend(hooks::attach_modifiers(&mut self.ebpf, kbtf, btf));
        }
        for (wrapper, inner) in hooks::WRAPPED_BY {
            if let Some(i) = inner.iter().find(|i| kbtf.has_function(i)) {
                functions.insert(wrapper.to_string(), HookState::Unavailable(format!("not hooked separately: its whole work is a call to {i} (see that hook)")));
            }
        }
        let attached = |f: &str, m: &BTreeMap<String, HookState>| matches!(m.get(f), Some(HookState::Attached(_)));
        // Per-VMA read locks are only tracked where an mmap_lock trylock can be told from a
        // blocking lock (the kernel trylocks under a VMA read lock itself), and where the end
        // of the fault is seen: vma_end_read() is inline (vma_refcount_put too, on most of its
        // callers), so the end of handle_mm_fault ends the fault path's hold, and the mmap_lock
        // hook double-checks the VMA's readers before it believes any other.
        let read_lock_hooks = ["handle_mm_fault", "vma_refcount_put", "lock_vma_under_rcu", "madvise_lock", "uffd_lock_vma"];
        if has(lbits::VMA_SEQ) && attached("down_read_trylock", &functions) && attached("down_write_trylock", &functions) {
            let second = hooks::attach_all(&mut self.ebpf, kbtf, btf, |f| {
                ["handle_mm_fault", "vma_refcount_put", "madvise_lock", "uffd_lock_vma"].contains(&f)
            });
            let fault_end = matches!(second.get("handle_mm_fault"), Some(HookState::Attached(_)));
            functions.extend(second);
            if fault_end {
                functions.extend(hooks::attach_all(&mut self.ebpf, kbtf, btf, |f| f == "lock_vma_under_rcu"));
            } else {
                functions.insert("lock_vma_under_rcu".into(), HookState::Unavailable("needs a hook on handle_mm_fault's return".into()));
            }
        } else if has(lbits::VMA_SEQ) {
            for f in read_lock_hooks {
                functions.insert(f.into(), HookState::Unavailable("needs hooks on down_read_trylock and down_write_trylock".into()));
            }
        }
        // The mmap_lock hooks look these per-task maps up only where something fills them.
        let on = |f: &str| attached(f, &functions);
        self.watch = 0;
        if ["down_read", "down_write", "up_read", "up_write"].iter().any(|f| on(f)) {
            self.watch |= tracer_common::watch::LOCKS;
        }
        if on("lock_vma_under_rcu") {
            self.watch |= tracer_common::watch::VMA_READ;
        }
        self.attached.functions = functions;
    }

    fn load_snapshots(&mut self, btf: &Btf, known: u32) -> Result<()> {
        if known & lbits::VMA_SEQ == 0 {
            bail!("this kernel has no per-VMA locks (no vm_lock_seq): the rules snapshots check do not apply");
        }
        if known & lbits::VMA_BASICS == 0 || known & lbits::TASK == 0 {
            bail!("the VMA or task layout did not resolve from BTF");
        }
        let p: &mut Iter = self.program("snapshot_task_vma")?;
        p.load("task_vma", btf).context("loading the iter/task_vma program")?;
        self.snapshots = true;
        // The first pass only learns every VMA (nothing to compare with yet).
        self.snapshot()
    }

    /// One VMA snapshot pass: every VMA of the traced processes goes through the iterator
    /// program, which sends the ones whose state tells something. No-op when snapshots are off.
    pub fn snapshot(&mut self) -> Result<()> {
        use std::io::Read as _;
        if !self.snapshots {
            return Ok(());
        }
        self.snapshot_round += 1;
        let round = self.snapshot_round;
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(self.ebpf.map_mut("SNAP_ROUND").ok_or_else(|| anyhow!("SNAP_ROUND map missing"))?)?;
        map.set(0, round, 0)?;
        let p: &mut Iter = self.program("snapshot_task_vma")?;
        let id = p.attach().context("creating the task_vma iterator")?;
        let link = p.take_link(id)?;
        let mut file = link.into_file().map_err(|e| anyhow!("opening the task_vma iterator: {e}"))?;
        let mut sink = Vec::new();
        file.read_to_end(&mut sink).context("reading the task_vma iterator")?;
        Ok(())
    }

    /// The kernel stack map, to read stacks by id while the tracer is busy; call once.
    pub fn take_stacks(&mut self) -> Option<StackTraceMap<MapData>> {
        self.stacks.take()
    }

    fn attach(&mut self, hook: &Hook, btf: &Btf, tp_layout: u32, force_tracepoint: bool) -> Result<()> {
        let btf_err = if force_tracepoint {
            anyhow!("not tried (--tracepoints)")
        } else {
            match self.attach_btf(hook, btf) {
                Ok(()) => {
                    self.attached.hooks.insert(hook.name.into(), "tp_btf".into());
                    return Ok(());
                }
                Err(e) => e,
            }
        };
        if hook.category == "mmap_lock" && tp_layout == 0 {
            bail!(
                "cannot attach {}: tp_btf failed ({btf_err:#}) and the plain tracepoint's record \
                 layout is unknown on this kernel",
                hook.name
            );
        }
        let prog: &mut TracePoint = self.program(hook.tp_prog)?;
        prog.load().with_context(|| format!("loading tracepoint program for {}", hook.name))?;
        prog.attach(hook.category, hook.name).map_err(|tp_err| {
            anyhow!(
                "cannot attach {}:{}: tp_btf failed ({btf_err:#}), tracepoint failed ({tp_err}). \
                 Is CONFIG_MMAP_LOCK_STATS/tracepoints enabled? `vmalock probe` shows what this kernel allows.",
                hook.category,
                hook.name
            )
        })?;
        self.attached.hooks.insert(hook.name.into(), "tracepoint".into());
        self.attached.fallbacks.insert(hook.name.into(), format!("tp_btf refused: {btf_err:#}"));
        Ok(())
    }

    fn attach_btf(&mut self, hook: &Hook, btf: &Btf) -> Result<()> {
        if hook.category == "mmap_lock" && self.write_arg == 0 {
            bail!("the mmap_lock tracepoint prototype is not one vmalock knows (see the log)");
        }
        let name = if hook.category == "mmap_lock" && self.write_arg == tp_btf_args::WRITE_AFTER_MEMCG_PATH {
            hook.btf_prog_memcg
        } else {
            hook.btf_prog
        };
        let prog: &mut BtfTracePoint = self.program(name)?;
        prog.load(hook.name, btf)?;
        // Unloaded again when refused, as the function hooks are (see hooks.rs).
        prog.attach().inspect_err(|_| drop(prog.unload()))?;
        Ok(())
    }

    fn program<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object (stale build?)"))?;
        Ok(p.try_into()?)
    }

    /// The kernel skipped hook hits since the last call (a new recursion-miss count): per-VMA
    /// read holds taken before now are no longer believed (`Config::hold_epoch`). Call before
    /// draining the ring, so every event sent under a stale hold lies in the stream's `missed`
    /// span, which the model does not judge.
    pub fn distrust_vma_read_holds(&mut self) -> Result<()> {
        self.hold_epoch = self.hold_epoch.wrapping_add(1);
        let (start_ns, tgid, send_mask) = self.configured;
        self.configure(start_ns, tgid, send_mask)
    }

    fn configure(&mut self, start_ns: u64, tgid: u32, send_mask: u32) -> Result<()> {
        self.configured = (start_ns, tgid, send_mask);
        let cfg = Config {
            start_ns,
            tgid,
            send_mask,
            wakeup_bytes: self.wakeup_bytes,
            fold: u32::from(self.fold),
            watch: self.watch,
            comm_filter: u32::from(self.comm.is_some()),
            hold_epoch: self.hold_epoch,
            comm: self.comm.unwrap_or([0; 16]),
        };
        let mut map: Array<&mut MapData, Config> =
            Array::try_from(self.ebpf.map_mut("CONFIG").ok_or_else(|| anyhow!("CONFIG map missing"))?)?;
        map.set(0, cfg, 0).context("writing the CONFIG map")?;
        Ok(())
    }

    /// Whether balanced mmap_lock acquire/release pairs with nothing sent between them, and VMA
    /// events whose facts already show them legal, stay in the kernel (tracer-ebpf's fold.rs,
    /// emit.rs `keep_legal`): on for default runs, which judge rules, off for
    /// `record`/`--all-events`, whose traces must hold every event. Call before `start`.
    pub fn fold_pairs(&mut self, on: bool) {
        self.fold = on;
    }

    /// `--comm NAME`: trace only tasks whose comm is `name` (checked by [`comm_bytes`]). Call
    /// before `start`.
    pub fn filter_comm(&mut self, name: [u8; 16]) {
        self.comm = Some(name);
    }

    /// Starts the flow of events for `tgid` (a process, or [`tracer_common::TGID_ALL`]) and
    /// returns the moment tracing began: a task started later is seen from birth (TASK_NEW).
    ///
    /// Events flow *before* that moment is taken, so no task born after it can have taken a
    /// lock unseen; a task born just before is simply not marked new.
    pub fn start(&mut self, tgid: u32, send_mask: u32) -> Result<u64> {
        self.configure(u64::MAX, tgid, send_mask)?;
        let now = monotonic_ns();
        self.configure(now, tgid, send_mask)?;
        Ok(now)
    }

    /// Starts the flow for a `-c` child forked at `born_after` (taken before the fork, with the
    /// probes already attached). Call it only while the child is blocked before exec, holding no
    /// lock, so what it did before the filter named it was only whole, balanced lock pairs.
    pub fn start_child(&mut self, born_after: u64, pid: u32, send_mask: u32) -> Result<u64> {
        self.configure(born_after, pid, send_mask)?;
        Ok(born_after)
    }

    /// Stops the flow of events (the programs stay attached until the Tracer is dropped).
    pub fn pause(&mut self) -> Result<()> {
        self.configure(u64::MAX, TGID_NONE, 0)
    }

    /// The event ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").ok_or_else(|| anyhow!("EVENTS map already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The aya-log channel for the eBPF side's own diagnostics.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| log::warn!("eBPF logs unavailable: {e}")).ok()
    }

    /// Per-CPU counters, summed per kind, plus lost events per CPU.
    pub fn counters(&self) -> Result<Counters> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").ok_or_else(|| anyhow!("COUNTERS map missing"))?)?;
        let lost_per_cpu: Vec<u64> = map.get(&counter::LOST, 0)?.iter().copied().collect();
        let mut seen = [0u64; kind::COUNT];
        for (k, slot) in seen.iter_mut().enumerate() {
            *slot = map.get(&(counter::SEEN_BASE + k as u32), 0)?.iter().sum();
        }
        let sum = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
        Ok(Counters {
            lost_per_cpu,
            seen,
            missed: self.missed()?,
            vma_read_taken: sum(counter::VMA_READ_TAKEN)?,
            vma_read_dropped: sum(counter::VMA_READ_DROPPED)?,
            folded_pairs: sum(counter::FOLDED_PAIRS)?,
            legal_kept: sum(counter::LEGAL_KEPT)?,
            lock_pairs_folded: sum(counter::LOCK_PAIRS_FOLDED)?,
            start_time_unreadable: sum(counter::START_TIME_UNREADABLE)?,
            snapshot_vmas: sum(counter::SNAP_VISITED)?,
            snapshot_rounds: u64::from(self.snapshot_round),
            program_times: self.program_times(),
        })
    }

    /// Each of our programs' run time, busiest first; empty unless kernel.bpf_stats_enabled is
    /// on (the kernel only counts then). Where `bpftool` is absent (the test guests) this is
    /// how a run says which hook its cost is in.
    pub fn program_times(&self) -> Vec<ProgTime> {
        use std::os::fd::AsFd as _;
        let mut out: Vec<ProgTime> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = prog_info(p.fd().ok()?.as_fd()).ok()?;
                (info.run_cnt > 0).then(|| ProgTime { name: name.to_string(), runs: info.run_cnt, run_time_ns: info.run_time_ns })
            })
            .collect();
        out.sort_by(|a, b| b.run_time_ns.cmp(&a.run_time_ns).then_with(|| a.name.cmp(&b.name)));
        out
    }

    /// Hook hits the kernel skipped (recursion protection), summed over our attached programs.
    pub fn missed(&self) -> Result<u64> {
        use std::os::fd::AsFd as _;
        let mut total = 0;
        for (_, p) in self.ebpf.programs() {
            // An iterator runs only when read, with no recursion check to skip it.
            if matches!(p, aya::programs::Program::Iter(_)) {
                continue;
            }
            if let Ok(fd) = p.fd() {
                total += recursion_misses(fd.as_fd())?;
            }
        }
        Ok(total)
    }
}

/// `bpf_prog_info.recursion_misses` of a loaded program: invocations the kernel skipped
/// because the same program was already running on that CPU. Where tracepoint probes run
/// preemptibly (newer kernels run them under SRCU-fast, not preempt_disable), a task preempted
/// inside our program makes every other task's hit on that CPU a silent miss.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    Ok(prog_info(fd)?.recursion_misses)
}

/// The kernel's `bpf_prog_info` for one of our programs.
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Result<aya_obj::generated::bpf_prog_info> {
    use std::os::fd::AsRawFd as _;
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD with a valid fd and an out-buffer of the size we pass;
    // the kernel writes at most info_len bytes (older kernels fewer: the rest stays zero).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    Ok(info)
}

/// One program's run time so far, as kernel.bpf_stats_enabled=1 counts it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgTime {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub lost_per_cpu: Vec<u64>,
    /// Hook hits that passed the TGID filter, by kind (sent or not).
    pub seen: [u64; kind::COUNT],
    /// Hook hits the kernel never ran our programs for (recursion protection).
    pub missed: u64,
    /// Per-VMA read locks taken and released by traced tasks (counted in the kernel).
    pub vma_read_taken: u64,
    pub vma_read_dropped: u64,
    /// mmap_lock acquire/release pairs the kernel folded instead of sending (default runs).
    pub folded_pairs: u64,
    /// VMA events whose facts at the hook showed them legal, kept instead of sent (default runs).
    pub legal_kept: u64,
    /// Lock-order rwsem acquire/release pairs along a chain sent within the last second, folded
    /// in the kernel (default runs).
    pub lock_pairs_folded: u64,
    /// Events whose task's start_time could not be read (not marked as traced from birth).
    pub start_time_unreadable: u64,
    /// VMA snapshot passes, and VMAs of traced processes compared in them.
    pub snapshot_rounds: u64,
    pub snapshot_vmas: u64,
    /// Per-program run time (kernel.bpf_stats_enabled=1 only; else empty).
    pub program_times: Vec<ProgTime>,
}

impl Counters {
    pub fn lost(&self) -> u64 {
        self.lost_per_cpu.iter().sum()
    }
}

/// The kernel stack `id` (innermost frame first), or empty if it is gone or unknown.
pub fn stack_ips(map: Option<&StackTraceMap<MapData>>, id: u32) -> Vec<u64> {
    map.and_then(|m| m.get(&id, 0).ok())
        .map(|st| st.frames().iter().map(|f| f.ip).collect())
        .unwrap_or_default()
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns` and `task_struct.start_time`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// This process's CPU time so far (every thread, user + system): CLOCK_PROCESS_CPUTIME_ID.
pub fn own_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `--comm NAME` as the kernel stores a comm: at most 15 bytes, NUL-padded to 16
/// (TASK_COMM_LEN). A longer name can match no task, since the kernel truncates every comm to
/// 15 bytes, so it is refused with the name that would match.
pub fn comm_bytes(name: &str) -> Result<[u8; 16]> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&0) {
        bail!("--comm needs a task name (as in /proc/PID/comm)");
    }
    if b.len() > 15 {
        let cut = (0..=15).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
        bail!(
            "--comm {name}: the kernel keeps at most 15 bytes of a task's name (TASK_COMM_LEN), so no task is named that; use --comm {}",
            &name[..cut]
        );
    }
    let mut out = [0u8; 16];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

#[cfg(test)]
mod comm_tests {
    use super::comm_bytes;

    #[test]
    fn comm_is_padded_and_long_names_name_their_kernel_form() {
        assert_eq!(&comm_bytes("bash").unwrap()[..5], b"bash\0");
        assert_eq!(comm_bytes("fifteen-bytes-x").unwrap()[15], 0);
        let e = comm_bytes("vmalock-workload").unwrap_err().to_string();
        assert!(e.contains("use --comm vmalock-workloa"), "{e}");
        assert!(comm_bytes("").is_err());
    }
}
