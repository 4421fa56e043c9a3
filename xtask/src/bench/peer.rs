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

/// The streaming peer on the host: the same three tracepoints and filter, printing one line per
/// hit (the probe, tid, time, mm and mode) as `vmalock run --all-events` sends each hit to
/// userspace: what a bpftrace user would write to see every event rather than count them.
pub const MMAP_LOCK_STREAM_SCRIPT: &str = "\
tracepoint:mmap_lock:mmap_lock_start_locking /pid == cpid/ { printf(\"start %d %llu %llx %d\\n\", tid, nsecs, args->mm, args->write); }
tracepoint:mmap_lock:mmap_lock_acquire_returned /pid == cpid/ { printf(\"acquired %d %llu %llx %d %d\\n\", tid, nsecs, args->mm, args->write, args->success); }
tracepoint:mmap_lock:mmap_lock_released /pid == cpid/ { printf(\"released %d %llu %llx %d\\n\", tid, nsecs, args->mm, args->write); }
";

/// The function hooks a default `vmalock run` attaches in a 7.x guest (its summary's "function
/// hooks" line on 7.2), as bpftrace kfunc/kretfunc probes. Written out because the script goes
/// into the guest before vmalock runs there; every guest bench checks it against what vmalock
/// attached in that run ([`guest_functions_differ`]) and says so in its report.
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

/// Functions vmalock hooks that the peer leaves out: bpftrace 0.17 generates no code for them.
const PEER_CANNOT: &[&str] = &["mprotect_fixup"];

/// The function hooks a vmalock summary's "function hooks:" line names, as bpftrace probes
/// ("kfunc:f" for an entry, "kretfunc:f" for a return). A hook seen through another one's
/// program ("inline on this kernel: ... via the down_write hook (fentry)") is no probe.
pub fn summary_functions(line: &str) -> std::collections::BTreeSet<String> {
    let list = line.split_once("function hooks: ").map_or(line, |(_, l)| l);
    let re = regex::Regex::new(r"(?:^|, )([A-Za-z0-9_]+)(:return)? \((fentry|fexit|kprobe|kretprobe)\)").expect("a valid regex");
    re.captures_iter(list)
        .map(|c| {
            let kind = if matches!(&c[3], "fentry" | "kprobe") { "kfunc" } else { "kretfunc" };
            format!("{kind}:{}", &c[1])
        })
        .collect()
}

/// How the peer's function probes differ from what vmalock attached (`summary_line`, from a
/// default run in the same guest), beyond [`PEER_CANNOT`]; None when they are the same.
pub fn guest_functions_differ(summary_line: &str) -> Option<String> {
    let cannot = |p: &String| PEER_CANNOT.iter().any(|f| p.split_once(':').is_some_and(|(_, n)| n == *f));
    let vmalock: std::collections::BTreeSet<String> = summary_functions(summary_line).into_iter().filter(|p| !cannot(p)).collect();
    let peer: std::collections::BTreeSet<String> = GUEST_FUNCTIONS.iter().map(|p| p.to_string()).collect();
    let only_vmalock: Vec<&String> = vmalock.difference(&peer).collect();
    let only_peer: Vec<&String> = peer.difference(&vmalock).collect();
    if only_vmalock.is_empty() && only_peer.is_empty() {
        return None;
    }
    Some(format!(
        "the bpftrace peer's function probes (xtask/src/bench/peer.rs GUEST_FUNCTIONS) differ from what vmalock attached in this guest: only vmalock {only_vmalock:?}, only the peer {only_peer:?}"
    ))
}

/// A sentence for the report on whether the peer hooked what vmalock hooked: Ok when it did,
/// Err (also worth printing) when it did not or could not be checked.
pub fn guest_functions_note(summary_line: Option<&str>) -> Result<String, String> {
    match summary_line {
        None => Err("No vmalock default run printed its function hooks, so the peer's probes were not checked against them.".into()),
        Some(l) => match guest_functions_differ(l) {
            Some(d) => Err(format!("WARNING: {d}.")),
            None => Ok(format!(
                "The peer's {} function probes are the ones vmalock's default run attached in this guest, but for {} (bpftrace 0.17 generates no code for it).",
                GUEST_FUNCTIONS.len(),
                PEER_CANNOT.join(", ")
            )),
        },
    }
}

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

/// The streaming peer in a 7.x guest: the streaming tracepoints and every function hook of
/// [`guest_script`], each hit printed as a line (probe, tid, time). It prints less than
/// vmalock sends per event (no lock state read from kernel memory, no stack id): the cheapest
/// bpftrace that sees every hit in userspace.
pub fn guest_stream_script() -> String {
    format!("{MMAP_LOCK_STREAM_SCRIPT}{}", function_blocks("/pid == cpid/ { printf(\"%s %d %llu\\n\", probe, tid, nsecs); }"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The "function hooks" line of a default run in the 7.2 guest (2026-11-27).
    const LINE_7_2: &str = "  function hooks: __vma_start_write (fentry), __walk_page_range (fentry), _install_special_mapping (fexit), down_read (fentry), down_read_trylock (fentry), down_read_trylock:return (fexit), down_write (fentry), down_write_trylock (fentry), down_write_trylock:return (fexit), handle_mm_fault (fexit), lock_vma_under_rcu (fexit), madvise_lock (fentry), madvise_lock:return (fexit), madvise_update_vma (fentry), madvise_update_vma:return (fexit), mbind_range (fentry), mbind_range:return (fexit), mlock_fixup (fentry), mlock_fixup:return (fexit), mprotect_fixup (fentry), mprotect_fixup:return (fexit), uffd_lock_vma (fentry), uffd_lock_vma:return (fexit), up_read (fentry), up_write (fentry), vma_link (fexit), vma_prepare (fentry), walk_page_mapping (fentry), walk_page_range_mm_unsafe (fentry), walk_page_range_vma_unsafe (fentry), walk_page_vma (fentry) (6 unavailable: see `vmalock probe`)";

    #[test]
    fn the_peer_hooks_what_vmalock_hooked_in_the_7_2_guest() {
        let f = summary_functions(LINE_7_2);
        assert_eq!(f.len(), 31);
        assert!(f.contains("kfunc:down_read_trylock") && f.contains("kretfunc:down_read_trylock") && f.contains("kretfunc:vma_link"));
        assert_eq!(guest_functions_differ(LINE_7_2), None);
        assert!(guest_functions_note(Some(LINE_7_2)).unwrap().starts_with("The peer's 29 function probes"));
    }

    #[test]
    fn a_hook_the_peer_lacks_or_has_extra_is_reported() {
        let more = LINE_7_2.replace("walk_page_vma (fentry)", "walk_page_vma (fentry), ksm_add_vma (kprobe)");
        let d = guest_functions_differ(&more).expect("a difference");
        assert!(d.contains("only vmalock [\"kfunc:ksm_add_vma\"], only the peer []"), "{d}");
        let fewer = LINE_7_2.replace("up_write (fentry), ", "");
        let d = guest_functions_differ(&fewer).expect("a difference");
        assert!(d.contains("only the peer [\"kfunc:up_write\"]"), "{d}");
        assert!(guest_functions_note(Some(&fewer)).unwrap_err().starts_with("WARNING: "));
        // A hook seen through another's program is no probe of its own.
        let inline = "  function hooks: down_write (fentry), vma_start_write (inline on this kernel: its down_write of vma->vm_lock->lock, via the down_write hook (fentry))";
        assert_eq!(summary_functions(inline).into_iter().collect::<Vec<_>>(), ["kfunc:down_write"]);
    }
}
