//! Helpers for tests that run the real `vmalock` binary against this machine's kernel.
#![allow(dead_code)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// The binaries under test: where cargo built them, or (in a test guest, where the test
/// executable runs far from its build tree) where VMALOCK_BIN / VMALOCK_WORKLOAD say.
pub fn vmalock() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| std::env::var("VMALOCK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vmalock").into()))
}

pub fn workload() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| std::env::var("VMALOCK_WORKLOAD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vmalock-workload").into()))
}

/// Records a skip: printed loudly, and appended to `$VMALOCK_SKIP_LOG` so `cargo xtask test`
/// counts it as skipped rather than passed.
/// The mixed mm workload (vmalock-mix).
pub fn mix() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| std::env::var("VMALOCK_MIX").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vmalock-mix").into()))
}

pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(path) = std::env::var("VMALOCK_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            // One write per line: tests run in parallel and append to the same log.
            let _ = f.write_all(format!("{test}: {why}\n").as_bytes());
        }
}

/// True when this test can load eBPF programs; otherwise records a skip saying why.
pub fn can_trace(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root to load eBPF programs (run `cargo xtask test` as root)");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip(test, "the running kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    true
}

pub fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    (dir, p)
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(vmalock()).args(args).output().expect("running vmalock");
    eprintln!(
        "$ vmalock {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts vmalock with `args` and returns once it says it is tracing (its stderr line), so a
/// test never races the attach, however slow the machine (TCG guests are).
pub fn spawn_tracing(args: &[&str]) -> (std::process::Child, std::thread::JoinHandle<String>) {
    use std::io::BufRead as _;
    let mut child = Command::new(vmalock())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning vmalock");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("vmalock exited before tracing: {seen}");
        }
        seen += &line;
        if line.starts_with("vmalock: tracing ") {
            break;
        }
    }
    // Keep draining stderr so vmalock never blocks on a full pipe; hand the rest back.
    let rest = std::thread::spawn(move || {
        let mut all = seen;
        let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
        all
    });
    (child, rest)
}

/// All lines of a trace file as JSON values.
pub fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("reading trace")
        .lines()
        .map(|l| serde_json::from_str(l).expect("trace line is JSON"))
        .collect()
}

/// The kernel's events, without vmalock's `missed` markers.
pub fn events(lines: &[Value]) -> Vec<&Value> {
    // `missed` markers and `stack` frames are lines of the stream, not kernel events.
    lines.iter().filter(|l| l["type"] == "event" && l["kind"] != "missed" && l["kind"] != "stack").collect()
}

/// Every event line in order, `missed` markers included.
pub fn stream(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "event").collect()
}

/// Names of the BPF programs loaded in the kernel right now.
pub fn loaded_program_names() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .collect()
}

/// Our programs' names as the kernel shows them (truncated to 15 bytes).
pub const OUR_PROGRAMS: &[&str] = &[
    "btf_mmap_start", "btf_mmap_acquir", "btf_mmap_releas", "btf_task_exit",
    "tp_mmap_start", "tp_mmap_acquire", "tp_mmap_release", "tp_task_exit",
    "cap_raw_tp", "cap_fentry", "cap_kprobe", "cap_iter_task_v",
    "install_special", "lock_vma_fexit", "lock_vma_kretpr", "snapshot_task_v", "vma_link_fexit",
    "vma_prepare_fen", "vma_prepare_kpr", "vma_refcount_pu", "vma_start_write", "walk_page_mappi",
    "walk_page_range", "walk_page_vma_f", "walk_page_vma_k", "walk_step_fentr", "walk_step_kprob",
    "handle_mm_fault", "down_read_trylo", "down_write_tryl", "mprotect_fixup_",
    "mlock_fixup_fen", "mlock_fixup_fex", "mlock_fixup_kpr", "mlock_fixup_kre",
    "mbind_range_fen", "mbind_range_fex", "mbind_range_kpr", "mbind_range_kre",
    "madvise_update_", "uffd_register_f", "uffd_register_k",
    "down_read_fentr", "down_read_kprob", "down_write_fent", "down_write_kpro",
    "up_read_fentry", "up_read_kprobe", "up_write_fentry", "up_write_kprobe",
    "ksm_add_vma_fen", "ksm_add_vma_kpr",
    "madvise_lock_fe", "madvise_lock_kp", "madvise_lock_kr", "uffd_lock_vma_f", "uffd_lock_vma_k",
];

pub fn assert_none_of_ours_loaded() {
    // The kernel frees a program after its last fd closes, but only after an RCU grace period
    // (a tracing program's after an RCU-tasks-trace one): right after a fast exit some can
    // still be listed. A leak stays; so look again for a few seconds before calling it one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ours = ours_loaded();
        if ours.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "vmalock programs still loaded 5 s after it exited: {ours:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Our programs loaded now that no other live vmalock holds.
fn ours_loaded() -> Vec<String> {
    // Other vmalock runs on this machine (a benchmark, another checkout's tests) hold programs
    // of the same names: a program another live vmalock process holds open is theirs, not a
    // leak (one held by anything else, such as a traced child, still counts as ours).
    let others = prog_ids_held_by_other_vmalocks();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| !others.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| OUR_PROGRAMS.contains(&n.as_str()))
        .collect()
}

/// Ids of BPF programs that running `vmalock` processes hold.
fn prog_ids_held_by_other_vmalocks() -> std::collections::HashSet<u32> {
    let me = std::process::id().to_string();
    let mut ids = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return ids };
    for p in procs.flatten() {
        let name = p.file_name();
        let name = name.to_string_lossy();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if std::fs::read_to_string(p.path().join("comm")).map_or(true, |c| c.trim() != "vmalock") {
            continue;
        }
        if let Ok(held) = prog_ids_held_by(&name) {
            ids.extend(held);
        }
    }
    ids
}

/// Ids of the BPF programs process `pid` holds through a program or link fd (`prog_id:` in
/// /proc/PID/fdinfo).
pub fn prog_ids_held_by(pid: &str) -> std::io::Result<std::collections::BTreeSet<u32>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok()))
        .collect())
}
