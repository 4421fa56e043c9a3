//! What a traced run's cost is made of: each BPF program's run time (kernel.bpf_stats_enabled=1,
//! `bpftool prog show`: run_time_ns / run_cnt) and the tracer process's own CPU time, per op of
//! the workload. A separate pass from the ratio runs, because turning the stats on costs time.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;

use super::{Bins, micro::Config};

#[derive(Clone, Debug, Serialize)]
pub struct Prog {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub bench: String,
    pub config: Config,
    pub ops: f64,
    pub progs: Vec<Prog>,
    /// Σ run_time_ns of the tracer's programs ÷ ops.
    pub bpf_ns_per_op: f64,
    /// The tracer process's user+system CPU (not its children's) ÷ ops.
    pub user_ns_per_op: Option<f64>,
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

pub fn run(bins: &Bins, bench: &str, config: Config, seconds: f64) -> Result<Profile> {
    let before = std::fs::read_to_string(STATS).context("reading kernel.bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("setting kernel.bpf_stats_enabled=1 (needs root)")?;
    let result = sample(bins, bench, config, seconds);
    let _ = std::fs::write(STATS, before.trim());
    result
}

fn sample(bins: &Bins, bench: &str, config: Config, seconds: f64) -> Result<Profile> {
    let mut child = config
        .command(bins, bench, seconds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the traced bench")?;
    let pid = child.id();
    let tck: f64 = crate::cmd::output(Command::new("getconf").arg("CLK_TCK")).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0);
    let mut progs: BTreeMap<u64, Prog> = BTreeMap::new();
    // The tracer's CPU from the moment its child runs the bench (a -c child is held, not yet
    // exec'd, while the probes load): start-up (BTF, loading and verifying programs, bpftrace's
    // compile) is not a per-op cost.
    let mut cpu_from: Option<u64> = None;
    let mut cpu_ticks = None;
    // The programs go away with the tracer: keep the last reading taken while it ran.
    while child.try_wait()?.is_none() {
        if let Some(t) = proc_cpu_ticks(pid) {
            if cpu_from.is_none() && bench_running(pid) {
                cpu_from = Some(t);
            }
            if let Some(from) = cpu_from {
                cpu_ticks = Some(t - from);
            }
        }
        // The tracer's own program fds: /proc/PID/fdinfo has prog_id, run_time_ns, run_cnt.
        for (id, run_cnt, run_time_ns) in prog_fds(pid) {
            let p = progs.entry(id).or_insert_with(|| Prog { name: String::new(), run_cnt: 0, run_time_ns: 0 });
            p.run_cnt = run_cnt;
            p.run_time_ns = run_time_ns;
        }
        // Names from `bpftool prog show` (fdinfo has none).
        if progs.values().any(|p| p.name.is_empty()) {
            if let Some(json) = crate::cmd::output(Command::new("bpftool").args(["prog", "show", "-j"])) {
                for p in serde_json::from_str::<serde_json::Value>(&json).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default() {
                    if let Some(mine) = p["id"].as_u64().and_then(|id| progs.get_mut(&id)) {
                        mine.name = p["name"].as_str().unwrap_or("?").to_string();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ops = stdout
        .lines()
        .find(|l| l.starts_with("vmalock-bench-load:"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ops=")))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("{bench} under {} printed no op count", config.name()))?;
    let mut progs: Vec<Prog> = progs.into_values().filter(|p| p.run_cnt > 0).collect();
    progs.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
    let bpf_ns: u64 = progs.iter().map(|p| p.run_time_ns).sum();
    Ok(Profile {
        bench: bench.to_string(),
        config,
        ops,
        bpf_ns_per_op: bpf_ns as f64 / ops,
        user_ns_per_op: cpu_ticks.map(|t| t as f64 / tck * 1e9 / ops),
        progs,
    })
}

/// True once a child of `pid` has exec'd vmalock-bench-load (comm is cut to 15 bytes).
fn bench_running(pid: u32) -> bool {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().any(|c| {
        std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.trim() == "vmalock-bench-l")
    })
}

/// (prog_id, run_cnt, run_time_ns) of every BPF program fd `pid` holds.
fn prog_fds(pid: u32) -> Vec<(u64, u64, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path()).ok()?;
            let get = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
            // Link fds name their program too, without its counters: only program fds count.
            Some((get("prog_id:")?, get("run_cnt:")?, get("run_time_ns:")?))
        })
        .collect()
}

/// utime + stime of `pid` itself, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes comm: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

/// Profiles of the default, all-events and bpftrace configurations on `benches`.
pub fn run_all(bins: &Bins, benches: &[String], configs: &[Config], seconds: f64) -> Result<Vec<Profile>> {
    let mut out = Vec::new();
    for bench in benches {
        for &config in configs.iter().filter(|c| **c != Config::Base) {
            let p = run(bins, bench, config, seconds)?;
            println!(
                "bench: profile {bench:<8} {:<10}: BPF {:.0} ns/op, tracer process {} ns/op",
                config.name(),
                p.bpf_ns_per_op,
                p.user_ns_per_op.map_or("?".into(), |n| format!("{n:.0}"))
            );
            out.push(p);
        }
    }
    Ok(out)
}
