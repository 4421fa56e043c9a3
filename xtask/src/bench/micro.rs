//! The overhead runs: each microbenchmark (vmalock-bench-load) untraced and under each tracer
//! configuration, alternating (base, traced, base, traced, ...) so a ratio always compares two
//! neighbouring runs: on a shared 2-core machine the load drifts within seconds.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use super::{Bins, peer};

pub const BENCHES: &[&str] = &["fault", "mmap", "mprotect", "madvise", "smaps", "fork"];

/// A way of running a microbenchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// No tracer.
    Base,
    /// `vmalock run -c`: the default probes, only the events the rules need.
    Default,
    /// `vmalock run --all-events -c`: every event sent to userspace (what `record` sends).
    AllEvents,
    /// `vmalock record -o FILE -c`: every event, also written to a trace file.
    Record,
    /// bpftrace on the same (mmap_lock) hooks, counting per task in maps.
    Bpftrace,
    /// bpftrace on the same hooks printing a line per hit: the peer of `--all-events` and
    /// `record`, which send every hit to userspace too.
    BpftraceStream,
    /// The floor: bpftrace on the same hooks with programs that only bump one per-CPU count.
    /// What attaching there costs before any program does any work (under TCG, a trampoline
    /// per function hook), which no tracer on those hooks can go below.
    HooksOnly,
}


impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Base => "base",
            Config::Default => "default",
            Config::AllEvents => "all-events",
            Config::Record => "record",
            Config::Bpftrace => "bpftrace",
            Config::BpftraceStream => "bpftrace-stream",
            Config::HooksOnly => "hooks-only",
        }
    }

    pub fn parse(s: &str) -> Result<Config> {
        [Config::Base, Config::Default, Config::AllEvents, Config::Record, Config::Bpftrace, Config::BpftraceStream, Config::HooksOnly]
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| anyhow!("unknown configuration {s:?}: one of default, all-events, record, bpftrace, bpftrace-stream, hooks-only"))
    }

    /// Runs bpftrace (the peer, or the floor).
    pub fn is_bpftrace(self) -> bool {
        matches!(self, Config::Bpftrace | Config::BpftraceStream | Config::HooksOnly)
    }

    /// The command that runs `bench` for `seconds` under this configuration.
    pub fn command(self, bins: &Bins, bench: &str, seconds: f64) -> Command {
        let load = format!("{} {bench} --seconds {seconds}", bins.load.display());
        let vmalock = |args: &[&str]| {
            let mut c = Command::new(&bins.vmalock);
            c.args(args).args(["-c", &load]);
            c
        };
        match self {
            Config::Base => {
                let mut c = Command::new(&bins.load);
                c.args([bench, "--seconds", &seconds.to_string()]);
                c
            }
            Config::Default => vmalock(&["run"]),
            Config::AllEvents => vmalock(&["run", "--all-events"]),
            Config::Record => {
                let trace = record_path();
                vmalock(&["record", "-o", trace.to_str().expect("utf-8 path")])
            }
            Config::Bpftrace | Config::BpftraceStream | Config::HooksOnly => {
                let script = match self {
                    Config::Bpftrace => peer::MMAP_LOCK_SCRIPT.to_string(),
                    Config::BpftraceStream => peer::MMAP_LOCK_STREAM_SCRIPT.to_string(),
                    _ => peer::hooks_only_script(false),
                };
                let mut c = Command::new("bpftrace");
                c.args(["-e", &script, "-c", &load]);
                c
            }
        }
    }
}

fn record_path() -> PathBuf {
    super::out_dir().join("record-config.trace")
}

/// One run's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub bench: String,
    pub config: Config,
    pub repeat: usize,
    pub ops_per_s: f64,
    /// The tracer's own counts, where it prints them (vmalock's summary; bpftrace's lost lines).
    pub events_received: Option<u64>,
    pub lost_events: Option<u64>,
    pub tracer_secs: Option<f64>,
}

/// Runs `c` and reads the bench's rate and the tracer's counts from what it prints.
pub fn run_once(mut c: Command, bench: &str, config: Config, repeat: usize) -> Result<Run> {
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{bench} under {} exited with {}:\n{stdout}\n{stderr}", config.name(), out.status);
    }
    parse(bench, config, repeat, &stdout, &stderr)
}

/// One run's numbers from its output (the bench's line on stdout, the tracer's summary).
pub fn parse(bench: &str, config: Config, repeat: usize, stdout: &str, stderr: &str) -> Result<Run> {
    let ops_per_s = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("vmalock-bench-load:"))
        .and_then(|l| field(l, "ops_per_s="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{bench} under {} printed no rate:\n{stdout}\n{stderr}", config.name()))?;
    let both = format!("{stdout}\n{stderr}");
    let lost_events = match config {
        Config::Base => None,
        _ if config.is_bpftrace() => Some(both.lines().filter_map(bpftrace_lost).sum()),
        _ => after(stderr, "lost events: "),
    };
    Ok(Run {
        bench: bench.to_string(),
        config,
        repeat,
        ops_per_s,
        events_received: after(stderr, "events received: "),
        lost_events,
        tracer_secs: stderr
            .lines()
            .find(|l| l.contains("vmalock: stopped:"))
            .and_then(|l| l.rsplit(" after ").next())
            .and_then(|t| t.trim().trim_end_matches(" s").parse().ok()),
    })
}

/// "key=value" → value (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// The number that follows `prefix` on the first line that contains it.
fn after(text: &str, prefix: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = &l[l.find(prefix)? + prefix.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

/// bpftrace's "Lost N events" line.
fn bpftrace_lost(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("Lost ")?;
    rest.strip_suffix(" events")?.parse().ok()
}

/// Every bench × traced configuration, `repeats` times, each traced run next to its own
/// untraced run.
pub fn run_all(bins: &Bins, benches: &[String], configs: &[Config], repeats: usize, seconds: f64) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for bench in benches {
        for repeat in 0..repeats {
            for &config in configs {
                for c in [Config::Base, config] {
                    let r = run_once(c.command(bins, bench, seconds), bench, c, repeat)?;
                    println!(
                        "bench: {bench:<8} {:<10} #{repeat}: {:>12.1} ops/s{}",
                        c.name(),
                        r.ops_per_s,
                        r.lost_events.map(|l| format!(" (lost {l})")).unwrap_or_default()
                    );
                    runs.push(r);
                }
            }
        }
    }
    let _ = std::fs::remove_file(record_path());
    Ok(runs)
}

/// traced ÷ untraced for each traced run and the base run just before it.
pub fn ratios(runs: &[Run], bench: &str, config: Config) -> Vec<f64> {
    runs.windows(2)
        .filter(|w| w[0].bench == bench && w[0].config == Config::Base && w[1].bench == bench && w[1].config == config)
        .map(|w| w[1].ops_per_s / w[0].ops_per_s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tracers_counts() {
        let s = "vmalock: stopped: command exited with status 0 after 1.100 s\n  events received: 183423 (mmap_lock_acquire_returned 110039)\n  lost events: 7 (per CPU: [0, 7])\n";
        assert_eq!(after(s, "events received: "), Some(183423));
        assert_eq!(after(s, "lost events: "), Some(7));
        assert_eq!(bpftrace_lost("Lost 12 events"), Some(12));
        assert_eq!(field("vmalock-bench-load: bench=mmap ops=3 ops_per_s=64268.8", "ops_per_s="), Some("64268.8"));
    }

    #[test]
    fn ratios_pair_each_traced_run_with_the_base_run_before_it() {
        let run = |config, ops_per_s| Run { bench: "mmap".into(), config, repeat: 0, ops_per_s, events_received: None, lost_events: None, tracer_secs: None };
        let runs = [run(Config::Base, 100.0), run(Config::Default, 50.0), run(Config::Base, 200.0), run(Config::Bpftrace, 150.0)];
        assert_eq!(ratios(&runs, "mmap", Config::Default), vec![0.5]);
        assert_eq!(ratios(&runs, "mmap", Config::Bpftrace), vec![0.75]);
        assert!(ratios(&runs, "fault", Config::Default).is_empty());
    }
}
