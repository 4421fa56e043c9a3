//! The overhead runs inside a test guest (`cargo xtask bench --guest debian-7.2`), where every
//! function hook attaches. Under QEMU/TCG absolute rates mean nothing; the traced ÷ untraced
//! ratios of neighbouring runs still compare configurations. The bpftrace column copies the
//! host's (Debian's) bpftrace in with its shared libraries (vm::guest::add_dynamic) and attaches
//! it to the same hooks as vmalock's default run there (peer::guest_script).
//!
//! Nor has it bpftool: the profile pass (one default run per bench with
//! kernel.bpf_stats_enabled=1) reads each program's run time from vmalock's own summary.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use super::{
    micro::{self, Config, Run},
    profile::{Prog, Profile},
};

/// The guest's shell script: every bench × repeat × (base, traced) pair, each run's output
/// behind a `VMALOCK-BENCH-RUN bench config repeat` line.
fn script(benches: &[String], configs: &[Config], repeats: usize, seconds: f64, profile: bool) -> String {
    let mut s = String::new();
    if configs.contains(&Config::Bpftrace) {
        let _ = write!(s, "cat > /tmp/peer.bt <<'VMALOCK-PEER-EOF'\n{}VMALOCK-PEER-EOF\n", super::peer::guest_script());
    }
    if configs.contains(&Config::BpftraceStream) {
        let _ = write!(s, "cat > /tmp/stream.bt <<'VMALOCK-PEER-EOF'\n{}VMALOCK-PEER-EOF\n", super::peer::guest_stream_script());
    }
    if configs.contains(&Config::HooksOnly) {
        let _ = write!(s, "cat > /tmp/floor.bt <<'VMALOCK-PEER-EOF'\n{}VMALOCK-PEER-EOF\n", super::peer::hooks_only_script(true));
    }
    s.push_str(
        "cd /tmp\n\
         run() {\n  b=$1; c=$2; r=$3; shift 3\n  \"$@\" > /tmp/o 2> /tmp/e\n  st=$?\n  echo \"VMALOCK-BENCH-RUN $b $c $r status=$st\"\n  \
         grep -h -E 'vmalock-bench-load:|vmalock: stopped:|events received:|lost events:|Lost [0-9]+ events|BPF run time|tracer CPU while tracing|function hooks:' /tmp/o /tmp/e\n  \
         [ $st = 0 ] || tail -n 8 /tmp/e\n}\n",
    );
    for b in benches {
        let load = format!("vmalock-bench-load {b} --seconds {seconds}");
        for r in 0..repeats {
            for &c in configs {
                let traced = match c {
                    Config::Default => format!("vmalock run -c '{load}'"),
                    Config::AllEvents => format!("vmalock run --all-events -c '{load}'"),
                    Config::Record => format!("vmalock record -o /tmp/bench.trace -c '{load}'"),
                    Config::Bpftrace => format!("bpftrace /tmp/peer.bt -c '{load}'"),
                    Config::BpftraceStream => format!("bpftrace /tmp/stream.bt -c '{load}'"),
                    Config::HooksOnly => format!("bpftrace /tmp/floor.bt -c '{load}'"),
                    Config::Base => continue,
                };
                let _ = writeln!(s, "run {b} base {r} {load}");
                let _ = writeln!(s, "run {b} {} {r} {traced}", c.name());
            }
        }
        if profile {
            let _ = writeln!(s, "echo 1 > /proc/sys/kernel/bpf_stats_enabled");
            let _ = writeln!(s, "run {b} {PROFILE} 0 vmalock run -c '{load}'");
            let _ = writeln!(s, "echo 0 > /proc/sys/kernel/bpf_stats_enabled");
        }
    }
    s
}

/// The profile runs' marker in place of a configuration name.
const PROFILE: &str = "profile-default";

/// A profile run's output: the ops the load did and each program's (name, avg ns, runs).
fn parse_profile(bench: &str, out: &str) -> Option<Profile> {
    let ops: f64 = out.split_whitespace().find_map(|w| w.strip_prefix("ops="))?.parse().ok()?;
    let list = out.lines().find_map(|l| l.split("busiest first): ").nth(1))?;
    let mut progs = Vec::new();
    for item in list.split(", ") {
        let (name, rest) = item.trim().split_once(' ')?;
        let (avg, runs) = rest.split_once('×')?;
        let (avg, runs): (u64, u64) = (avg.parse().ok()?, runs.parse().ok()?);
        progs.push(Prog { name: name.to_string(), run_cnt: runs, run_time_ns: avg * runs });
    }
    let total: u64 = progs.iter().map(|p| p.run_time_ns).sum();
    // The daemon's own CPU from attach to stop, as its summary reports it.
    let tracer_s: Option<f64> = out
        .lines()
        .find_map(|l| l.split("tracer CPU while tracing: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Some(Profile {
        bench: bench.to_string(),
        config: Config::Default,
        ops,
        progs,
        bpf_ns_per_op: total as f64 / ops.max(1.0),
        user_ns_per_op: tracer_s.map(|s| s * 1e9 / ops.max(1.0)),
    })
}

/// Boots `kernel`, runs the script, and reads the runs back from the serial log, with the
/// first vmalock summary's "function hooks:" line (what the peer is checked against).
pub fn run(kernel: &str, benches: &[String], configs: &[Config], repeats: usize, seconds: f64, profile: bool) -> Result<(Vec<Run>, Vec<Profile>, Option<String>)> {
    let script = script(benches, configs, repeats, seconds, profile);
    let dynamic: Vec<std::path::PathBuf> = if configs.iter().any(|c| c.is_bpftrace()) {
        super::peer::ensure_packages(&[("bpftrace", "bpftrace")])?;
        vec![super::peer::which("bpftrace").context("bpftrace is not on PATH after installing it")?]
    } else {
        Vec::new()
    };
    crate::vm::run_command(kernel, &script, std::time::Duration::from_secs(3000), &dynamic)?;
    let log = crate::vm::report_dir().join(format!("{kernel}.run.log"));
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let (runs, profiles) = parse_log(&text);
    Ok((runs, profiles, function_hooks_line(&text)))
}

/// The first "function hooks:" line of a vmalock summary in the serial log.
fn function_hooks_line(text: &str) -> Option<String> {
    text.lines().find(|l| l.trim_start().starts_with("function hooks: ")).map(|l| l.trim().to_string())
}

/// What the serial log says: the ratio runs, and the profile runs.
fn parse_log(text: &str) -> (Vec<Run>, Vec<Profile>) {
    let mut runs = Vec::new();
    let mut profiles = Vec::new();
    // (bench, configuration, or None for a profile run, repeat, output)
    let mut current: Option<(String, Option<Config>, usize, String)> = None;
    let mut finish = |cur: Option<(String, Option<Config>, usize, String)>| match cur {
        Some((b, Some(c), r, out)) => match micro::parse(&b, c, r, &out, &out) {
            Ok(run) => runs.push(run),
            Err(e) => println!("bench: guest run {b} {} #{r} unreadable: {e:#}", c.name()),
        },
        Some((b, None, _, out)) => match parse_profile(&b, &out) {
            Some(p) => profiles.push(p),
            None => println!("bench: guest profile run of {b} unreadable (no ops= or no BPF run time line):\n{out}"),
        },
        None => {}
    };
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("VMALOCK-BENCH-RUN ") {
            finish(current.take());
            let w: Vec<&str> = rest.split_whitespace().collect();
            let config = match w.get(1) {
                Some(&PROFILE) => Some(None),
                Some(c) => Config::parse(c).ok().map(Some),
                None => None,
            };
            if let (Some(b), Some(c), Some(Ok(r))) = (w.first(), config, w.get(2).map(|r| r.parse())) {
                current = Some((b.to_string(), c, r, String::new()));
            }
        } else if let Some((_, _, _, out)) = current.as_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    finish(current);
    (runs, profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runs_back_from_the_serial_log() {
        let log = "noise\nVMALOCK-BENCH-RUN mmap base 0 status=0\nvmalock-bench-load: bench=mmap threads=1 ops=10 secs=1.0 ops_per_s=100.0\n\
                   VMALOCK-BENCH-RUN mmap default 0 status=0\nvmalock-bench-load: bench=mmap threads=1 ops=5 secs=1.0 ops_per_s=50.0\n\
                   vmalock: stopped: command exited with status 0 after 2.000 s\n  events received: 400 (x)\n  lost events: 0 (per CPU: [0])\n";
        let (runs, profiles) = parse_log(log);
        assert!(profiles.is_empty());
        assert_eq!(runs.len(), 2);
        assert_eq!(micro::ratios(&runs, "mmap", Config::Default), vec![0.5]);
        assert_eq!(runs[1].events_received, Some(400));
        assert_eq!(runs[1].tracer_secs, Some(2.0));
    }

    #[test]
    fn the_script_pairs_each_traced_run_with_a_base_run() {
        let s = script(&["fork".into()], &[Config::Default, Config::Bpftrace], 2, 1.0, true);
        assert_eq!(s.matches("run fork base").count(), 4);
        assert_eq!(s.matches("run fork default").count(), 2);
        assert_eq!(s.matches("run fork bpftrace 1 bpftrace /tmp/peer.bt -c 'vmalock-bench-load fork").count(), 1);
        // The bpftrace script is written before the first run, and names the function hooks.
        let written = s.find("cat > /tmp/peer.bt").unwrap();
        assert!(written < s.find("run fork base").unwrap());
        assert!(s.contains("kfunc:__vma_start_write") && s.contains("VMALOCK-PEER-EOF\n"));
        // One profile run per bench, between stats on and off.
        assert_eq!(s.matches("run fork profile-default 0").count(), 1);
        let on = s.find("bpf_stats_enabled").unwrap();
        assert!(on < s.find("run fork profile-default").unwrap() && s.matches("bpf_stats_enabled").count() == 2);
        // The floor runs bpftrace on the same hooks with count-only programs and no filter.
        let s = script(&["fork".into()], &[Config::HooksOnly], 1, 1.0, false);
        assert_eq!(s.matches("run fork hooks-only 0 bpftrace /tmp/floor.bt -c 'vmalock-bench-load fork").count(), 1);
        let floor = &s[s.find("cat > /tmp/floor.bt").unwrap()..s.find("run fork base").unwrap()];
        assert!(floor.contains("kfunc:__vma_start_write") && floor.contains("kretfunc:handle_mm_fault"));
        assert!(floor.contains("tracepoint:mmap_lock:mmap_lock_released") && !floor.contains("cpid"));
        assert_eq!(floor.matches("{ @n = count(); }").count(), 3, "tracepoints, kfunc and kretfunc blocks");
        // The streaming peer: the same hooks and filter, a line printed per hit.
        let s = script(&["fork".into()], &[Config::BpftraceStream], 1, 1.0, false);
        assert_eq!(s.matches("run fork bpftrace-stream 0 bpftrace /tmp/stream.bt -c 'vmalock-bench-load fork").count(), 1);
        let stream = &s[s.find("cat > /tmp/stream.bt").unwrap()..s.find("run fork base").unwrap()];
        assert!(stream.contains("kfunc:__vma_start_write") && stream.contains("kretfunc:handle_mm_fault"));
        assert_eq!(stream.matches("/pid == cpid/ { printf(").count(), 5, "three tracepoints, kfunc and kretfunc blocks");
        assert!(!stream.contains("count()"));
        let s = script(&["fork".into()], &[Config::Default], 1, 1.0, false);
        assert!(!s.contains("bpftrace"));
    }

    #[test]
    fn finds_the_function_hooks_vmalock_attached() {
        let log = "VMALOCK-BENCH-RUN mmap default 0 status=0\n  hooks: mmap_lock_released (tp_btf)\n  function hooks: down_read (fentry), up_read (fentry) (6 unavailable: see `vmalock probe`)\n";
        assert_eq!(function_hooks_line(log).as_deref(), Some("function hooks: down_read (fentry), up_read (fentry) (6 unavailable: see `vmalock probe`)"));
        assert_eq!(function_hooks_line("VMALOCK-BENCH-RUN mmap bpftrace 0 status=0\n"), None);
        // Every vmalock run's summary line reaches the log.
        assert!(script(&["fork".into()], &[Config::Default], 1, 1.0, false).contains("|function hooks:'"));
    }

    #[test]
    fn reads_a_profile_run_from_vmalocks_summary() {
        let log = "VMALOCK-BENCH-RUN mprotect profile-default 0 status=0\n\
                   vmalock-bench-load: bench=mprotect threads=1 ops=100 secs=1.0 ops_per_s=100.0\n\
                   \x20 BPF run time (kernel.bpf_stats_enabled=1; avg ns × runs, busiest first): vma_start_write_fentry 5000×600, btf_mmap_acquired 900×200\n\
                   \x20 tracer CPU while tracing: 0.002 s (0.2% of one CPU)\n";
        let (runs, profiles) = parse_log(log);
        assert!(runs.is_empty());
        assert_eq!(profiles.len(), 1);
        let p = &profiles[0];
        assert_eq!((p.bench.as_str(), p.ops, p.progs.len()), ("mprotect", 100.0, 2));
        assert_eq!((p.progs[0].name.as_str(), p.progs[0].run_cnt, p.progs[0].run_time_ns), ("vma_start_write_fentry", 600, 3_000_000));
        assert_eq!(p.bpf_ns_per_op, (3_000_000.0 + 180_000.0) / 100.0);
        assert_eq!(p.user_ns_per_op.map(|n| n.round()), Some(20_000.0));
    }
}
