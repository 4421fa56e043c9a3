//! The peer a user would pick instead of vmalock: bpftrace (Debian's package) on the same hooks,
//! and bpftool for the per-program run-time numbers. Both are installed on first use through the
//! project's private apt configuration, as QEMU is for the VM suite.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};

use crate::{cmd, vm};

/// Installs the Debian packages that provide `binaries` (binary → package) when any is missing.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted.iter().filter(|(bin, _)| !on_path(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        return Err(anyhow!("the benchmark needs {missing:?}: run it as root, or apt-get install them"));
    }
    let apt = vm::apt::Apt::new(&vm::cache_dir())?;
    apt.update_if_stale()?;
    println!("bench: installing {missing:?} (Debian packages)");
    cmd::run(apt.apt_get().args(["install", "-y", "--no-install-recommends"]).args(&missing))
        .with_context(|| format!("installing {missing:?}"))
}

pub fn on_path(bin: &str) -> bool {
    which(bin).is_some()
}

/// Where `bin` is on PATH.
pub fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| Path::new(&d).join(bin)).find(|p| p.is_file())
}

/// bpftrace on the three mmap_lock tracepoints, filtered to the traced command's process like
/// `vmalock -c` is, keeping per-task counts in maps (the cheapest thing a bpftrace user would write
/// to follow who takes the lock how; vmalock does more per event: it sends each to userspace).
pub const MMAP_LOCK_SCRIPT: &str = "\
tracepoint:mmap_lock:mmap_lock_start_locking /pid == cpid/ { @start[tid, args->write] = count(); }
tracepoint:mmap_lock:mmap_lock_acquire_returned /pid == cpid/ { @acquired[tid, args->write, args->success] = count(); }
tracepoint:mmap_lock:mmap_lock_released /pid == cpid/ { @released[tid, args->write] = count(); }
";

/// The function hooks a default `vmalock run` attaches in a 7.x guest (its summary's "function
/// hooks" line on 7.2), as bpftrace kfunc/kretfunc probes.
const GUEST_FUNCTIONS: &[&str] = &[
    "kfunc:__vma_start_write",
    "kfunc:__walk_page_range",
    "kretfunc:_install_special_mapping",
    "kfunc:down_read",
    "kfunc:down_read_trylock",
    "kretfunc:down_read_trylock",
    "kfunc:down_write",
    "kfunc:down_write_trylock",
    "kretfunc:down_write_trylock",
    "kretfunc:handle_mm_fault",
    "kretfunc:lock_vma_under_rcu",
    "kfunc:madvise_lock",
    "kretfunc:madvise_lock",
    "kfunc:madvise_update_vma",
    "kretfunc:madvise_update_vma",
    "kfunc:mbind_range",
    "kretfunc:mbind_range",
    "kfunc:mlock_fixup",
    "kretfunc:mlock_fixup",
    // Not mprotect_fixup (kfunc or kretfunc): bpftrace 0.17 stops with "Code not generated
    // for probe" on it in the 7.2 guest (it has seven arguments), so the peer does that much
    // less than vmalock on mprotect.
    "kfunc:uffd_lock_vma",
    "kretfunc:uffd_lock_vma",
    "kfunc:up_read",
    "kfunc:up_write",
    "kretfunc:vma_link",
    "kfunc:vma_prepare",
    "kfunc:walk_page_mapping",
    "kfunc:walk_page_range_mm_unsafe",
    "kfunc:walk_page_range_vma_unsafe",
    "kfunc:walk_page_vma",
];

/// The floor configuration: the same probes as the peer (in a guest, also every function hook
/// vmalock attaches there), each only bumping one per-CPU count, with no filter.
pub fn hooks_only_script(guest: bool) -> String {
    let tracepoints = "tracepoint:mmap_lock:mmap_lock_start_locking,\n\
                       tracepoint:mmap_lock:mmap_lock_acquire_returned,\n\
                       tracepoint:mmap_lock:mmap_lock_released { @n = count(); }\n";
    if !guest {
        return tracepoints.to_string();
    }
    format!("{tracepoints}{}", function_blocks("{ @n = count(); }"))
}

/// bpftrace in a 7.x guest: the mmap_lock tracepoints as on the host, plus every function hook
/// vmalock's default run attaches there, each counted per probe and task in a map (bpftrace's
/// `pid` is the TGID, the filter `vmalock -c` applies).
pub fn guest_script() -> String {
    format!("{MMAP_LOCK_SCRIPT}{}", function_blocks("/pid == cpid/ { @calls[probe, tid] = count(); }"))
}

/// GUEST_FUNCTIONS as bpftrace blocks, each running `action`: one block per probe type, since
/// bpftrace 0.17 generates no code for a kretfunc that shares a block with a kfunc of the same
/// function.
fn function_blocks(action: &str) -> String {
    let block = |prefix: &str| {
        let probes: Vec<&str> = GUEST_FUNCTIONS.iter().copied().filter(|p| p.starts_with(prefix)).collect();
        format!("{} {action}\n", probes.join(",\n"))
    };
    format!("{}{}", block("kfunc:"), block("kretfunc:"))
}
