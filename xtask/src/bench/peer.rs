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
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(bin).is_file()))
        .unwrap_or(false)
}

/// bpftrace on the three mmap_lock tracepoints, filtered to the traced command's process like
/// `vmalock -c` is, keeping per-task counts in maps (the cheapest thing a bpftrace user would write
/// to follow who takes the lock how; vmalock does more per event: it sends each to userspace).
pub const MMAP_LOCK_SCRIPT: &str = "\
tracepoint:mmap_lock:mmap_lock_start_locking /pid == cpid/ { @start[tid, args->write] = count(); }
tracepoint:mmap_lock:mmap_lock_acquire_returned /pid == cpid/ { @acquired[tid, args->write, args->success] = count(); }
tracepoint:mmap_lock:mmap_lock_released /pid == cpid/ { @released[tid, args->write] = count(); }
";
