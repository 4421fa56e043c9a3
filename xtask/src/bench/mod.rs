//! `cargo xtask bench`: what tracing costs. The mm microbenchmarks (vmalock-bench-load) run
//! untraced and under vmalock (default probes, every event, record) and under bpftrace on the same
//! hooks, alternating; the report gives traced ÷ untraced throughput (min/median/max), what the
//! BPF programs and the tracer process spend per op, the model's replay rate on one core, and the
//! daemon's RSS over a long live run. Results: target/bench/results.{md,json}.
//!
//! A benchmark, not a test: it asserts nothing; it reports, with the machine's load beside it.

mod dashboard;
mod guest;
mod micro;
mod model;
pub mod peer;
mod profile;
mod report;
mod stats;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

pub use micro::BENCHES;

/// The release binaries a bench runs.
pub struct Bins {
    pub vmalock: PathBuf,
    pub load: PathBuf,
    pub mix: PathBuf,
}

pub struct Options {
    pub benches: Vec<String>,
    pub configs: Vec<String>,
    pub repeats: usize,
    pub seconds: f64,
    /// Skip the BPF run-time profile pass.
    pub no_profile: bool,
    /// Seconds of the live RSS run (0: skip it).
    pub rss_seconds: u64,
    /// Seconds of mmap/munmap recorded for the replay trace (0: skip the replay).
    pub replay_seconds: f64,
    /// Also write the markdown report here (e.g. bench/RESULTS.md), and its JSON beside it.
    pub results: Option<PathBuf>,
    /// Run the ratios in this test guest instead of on the host (bpftrace copied in with its
    /// shared libraries when the bpftrace configuration is asked for).
    pub guest: Option<String>,
    /// Seconds of each dashboard-under-load run (mmap and mprotect with every event; 0: skip).
    pub dashboard_seconds: f64,
}

pub fn out_dir() -> PathBuf {
    cmd::workspace_root().join("target/bench")
}

pub fn run(o: &Options, argv: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!("cargo xtask bench loads eBPF programs (vmalock, bpftrace): run it as root");
    }
    for b in &o.benches {
        if !BENCHES.contains(&b.as_str()) {
            bail!("unknown bench {b:?}: one of {}", BENCHES.join(", "));
        }
    }
    let configs = o.configs.iter().map(|c| micro::Config::parse(c)).collect::<Result<Vec<_>>>()?;
    if let Some(kernel) = &o.guest {
        return run_guest(o, kernel, &configs, argv);
    }
    if configs.iter().any(|c| c.is_bpftrace()) || !o.no_profile {
        peer::ensure_packages(&[("bpftrace", "bpftrace"), ("bpftool", "bpftool")])?;
    }
    std::fs::create_dir_all(out_dir())?;
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "tracer-user", "--bins"])).context("building the release binaries")?;
    let rel = cmd::workspace_root().join("target/release");
    let bins = Bins { vmalock: rel.join("vmalock"), load: rel.join("vmalock-bench-load"), mix: rel.join("vmalock-mix") };

    let load_before = report::uptime();
    let started = report::now_utc();
    let runs = micro::run_all(&bins, &o.benches, &configs, o.repeats, o.seconds)?;
    let load_after_micro = report::uptime();
    let profiles = if o.no_profile {
        Vec::new()
    } else {
        let hot: Vec<String> = o.benches.iter().filter(|b| ["fault", "mmap"].contains(&b.as_str())).cloned().collect();
        let pc: Vec<_> = configs.iter().copied().filter(|c| *c != micro::Config::Record).collect();
        profile::run_all(&bins, &hot, &pc, o.seconds)?
    };
    let replays = if o.replay_seconds > 0.0 { model::replay(&bins, o.replay_seconds, 3)? } else { Vec::new() };
    let rss = (o.rss_seconds > 0).then(|| model::rss(&bins, o.rss_seconds)).transpose()?;
    let mut dash = Vec::new();
    if o.dashboard_seconds > 0.0 {
        for b in o.benches.iter().filter(|b| ["mmap", "mprotect"].contains(&b.as_str())) {
            dash.push(dashboard::run(&bins, b, o.dashboard_seconds)?);
        }
    }
    let load_after = report::uptime();

    let r = report::Report {
        hooks: "Hooks on this kernel: the mmap_lock tracepoints and VMA snapshots (no function hooks: fentry EPERM, no kprobes); bpftrace counts the same three tracepoints per task in maps; bpftrace-stream prints a line per hit on them instead (the peer of --all-events and record, which send every hit to userspace); hooks-only is bpftrace on them with programs that only bump one per-CPU count (the floor of attaching there).".into(),
        started,
        machine: report::machine(),
        command: argv.to_string(),
        repeats: o.repeats,
        seconds: o.seconds,
        load: vec![("before".into(), load_before), ("after the ratio runs".into(), load_after_micro), ("at the end".into(), load_after)],
        rows: report::rows(&runs, &o.benches, &configs),
        runs,
        profiles,
        replays,
        rss,
        dashboard: dash,
    };
    write(o, &r, "results")
}

fn write(o: &Options, r: &report::Report, stem: &str) -> Result<()> {
    let md = report::markdown(r);
    std::fs::write(out_dir().join(format!("{stem}.md")), &md)?;
    std::fs::write(out_dir().join(format!("{stem}.json")), serde_json::to_string_pretty(r)?)?;
    if let Some(p) = &o.results {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
        let json = p.with_extension("json");
        std::fs::write(&json, serde_json::to_string_pretty(r)?).with_context(|| format!("writing {}", json.display()))?;
    }
    println!("\n{md}");
    println!("bench: written to {}/{stem}.{{md,json}}", out_dir().display());
    Ok(())
}

/// The ratio runs in a test guest under QEMU/TCG (every function hook attached there).
fn run_guest(o: &Options, kernel: &str, configs: &[micro::Config], argv: &str) -> Result<()> {
    std::fs::create_dir_all(out_dir())?;
    let load_before = report::uptime();
    let started = report::now_utc();
    let (runs, profiles, functions) = guest::run(kernel, &o.benches, &configs, o.repeats, o.seconds, !o.no_profile)?;
    // The peer's probes are written out in xtask; say whether they were what vmalock hooked.
    let peer_note = if configs.iter().any(|c| c.is_bpftrace()) {
        let note = peer::guest_functions_note(functions.as_deref()).unwrap_or_else(|warning| {
            println!("bench: {warning}");
            warning
        });
        format!(" {note}")
    } else {
        String::new()
    };
    let r = report::Report {
        hooks: format!(
            "Guest {kernel} under QEMU/TCG, every hook the kernel allows (see the run log, target/vm-report/{kernel}.run.log): absolute rates are emulation speed, only ratios mean something. bpftrace (the host's, copied in with its libraries) counts the same tracepoints and function hooks per task in maps; bpftrace-stream prints a line per hit on them instead (probe, tid, time: the peer of --all-events and record, which send every hit to userspace, with the lock state and a stack id where a verdict can show it); hooks-only is bpftrace on the same hooks with programs that only bump one per-CPU count: the floor of attaching there (a trampoline per function hook), below which no tracer on those hooks can go.{peer_note}"
        ),
        started,
        machine: format!("{} (host); guest {kernel} under QEMU/TCG", report::machine()),
        command: argv.to_string(),
        repeats: o.repeats,
        seconds: o.seconds,
        load: vec![("before (host)".into(), load_before), ("at the end (host)".into(), report::uptime())],
        rows: report::rows(&runs, &o.benches, &configs),
        runs,
        profiles,
        replays: Vec::new(),
        rss: None,
        dashboard: Vec::new(),
    };
    write(o, &r, &format!("guest-{kernel}"))
}
