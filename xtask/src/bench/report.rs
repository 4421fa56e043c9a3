//! The benchmark's report: a markdown table (quoted by the README) and the same numbers as JSON,
//! with the date, the machine and its load, and the targets checked against them.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    micro::{self, Config, Run},
    model::{Replay, Rss},
    profile::Profile,
    stats::{Spread, spread},
};

#[derive(Serialize)]
pub struct Report {
    /// Which hooks ran (host or guest).
    pub hooks: String,
    pub started: String,
    pub machine: String,
    pub command: String,
    pub repeats: usize,
    pub seconds: f64,
    /// (when, /proc/loadavg) — the machine is shared: ratios come from neighbouring runs.
    pub load: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub runs: Vec<Run>,
    pub profiles: Vec<Profile>,
    /// The binary trace's replay, then the same events' as JSON Lines.
    pub replays: Vec<Replay>,
    pub rss: Option<Rss>,
    /// The dashboard fed at these benches' event rates.
    pub dashboard: Vec<super::dashboard::DashRun>,
}

#[derive(Serialize)]
pub struct Row {
    pub bench: String,
    pub config: Config,
    pub ratio: Option<Spread>,
    pub base_ops_per_s: Option<Spread>,
    /// Events the tracer received per second of its run (vmalock only), median.
    pub events_per_s: Option<f64>,
    pub lost_events: Option<u64>,
}

pub fn rows(runs: &[Run], benches: &[String], configs: &[Config]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in benches {
        let base: Vec<f64> = runs.iter().filter(|r| &r.bench == b && r.config == Config::Base).map(|r| r.ops_per_s).collect();
        for &c in configs {
            let mine: Vec<&Run> = runs.iter().filter(|r| &r.bench == b && r.config == c).collect();
            let rates: Vec<f64> =
                mine.iter().filter_map(|r| Some(r.events_received? as f64 / r.tracer_secs.filter(|s| *s > 0.0)?)).collect();
            let lost: Vec<u64> = mine.iter().filter_map(|r| r.lost_events).collect();
            out.push(Row {
                bench: b.clone(),
                config: c,
                ratio: spread(&micro::ratios(runs, b, c)),
                base_ops_per_s: spread(&base),
                events_per_s: spread(&rates).map(|s| s.median),
                lost_events: (!lost.is_empty()).then(|| lost.iter().sum()),
            });
        }
    }
    out
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# vmalock overhead benchmark\n");
    let _ = writeln!(s, "- date (UTC): {}", r.started);
    let _ = writeln!(s, "- machine: {}", r.machine);
    let _ = writeln!(s, "- command: `{}`", r.command);
    let _ = writeln!(s, "- {} repeats of {} s per bench and configuration; each traced run is paired with the untraced run just before it (A B A C …)", r.repeats, r.seconds);
    for (when, l) in &r.load {
        let _ = writeln!(s, "- load average {when}: {l}");
    }
    let _ = writeln!(s, "\nThroughput traced ÷ untraced (1.00 = no cost). {}\n", r.hooks);
    let _ = writeln!(s, "| bench | configuration | ratio min | ratio median | ratio max | untraced ops/s (median) | events/s to userspace | lost events |");
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &r.rows {
        let (mn, md, mx) = row.ratio.map_or(("-".into(), "-".into(), "-".into()), |x| (f2(x.min), f2(x.median), f2(x.max)));
        let _ = writeln!(
            s,
            "| {} | {} | {mn} | {md} | {mx} | {} | {} | {} |",
            row.bench,
            row.config.name(),
            row.base_ops_per_s.map_or("-".into(), |b| format!("{:.0}", b.median)),
            row.events_per_s.map_or("-".into(), |e| format!("{e:.0}")),
            row.lost_events.map_or("-".into(), |l| l.to_string()),
        );
    }
    if !r.profiles.is_empty() {
        let _ = writeln!(s, "\nWhere the time goes (separate runs with kernel.bpf_stats_enabled=1; BPF = Σ run_time_ns of the tracer's programs; tracer process = its own user+system CPU):\n");
        let _ = writeln!(s, "| bench | configuration | BPF ns/op | tracer process ns/op | programs (avg ns/run × runs) |");
        let _ = writeln!(s, "| --- | --- | ---: | ---: | --- |");
        for p in &r.profiles {
            let progs: Vec<String> = p
                .progs
                .iter()
                .map(|g| format!("{} {:.0}×{}", g.name, g.run_time_ns as f64 / g.run_cnt.max(1) as f64, g.run_cnt))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} |",
                p.bench,
                p.config.name(),
                p.bpf_ns_per_op,
                p.user_ns_per_op.map_or("-".into(), |n| format!("{n:.0}")),
                progs.join(", ")
            );
        }
    }
    for rp in &r.replays {
        let _ = writeln!(
            s,
            "\nModel replay of a {} trace (`vmalock check` pinned to one CPU, best of 3): {} events ({:.1} MB) in {:.2} s wall / {:.2} s CPU = **{:.2} M events/s wall, {:.2} M events/s per CPU-second**. Trace: `{}`.",
            rp.format,
            rp.events,
            rp.trace_bytes as f64 / 1e6,
            rp.wall_secs,
            rp.cpu_secs,
            rp.events_per_wall_s / 1e6,
            rp.events_per_cpu_s / 1e6,
            rp.recorded_with
        );
    }
    super::dashboard::markdown(&r.dashboard, &mut s);
    if let Some(m) = &r.rss {
        let _ = writeln!(
            s,
            "\nDaemon RSS over {} s live (`{}`, {} mix rounds): peak {} KiB; max over the 2nd quarter {} KiB, over the last quarter {} KiB: **{}**.",
            m.seconds,
            m.command,
            m.mix_rounds,
            m.peak_kib,
            m.second_quarter_max_kib,
            m.last_quarter_max_kib,
            if m.flat { "flat" } else { "GROWING" }
        );
        let events = m.summary.lines().find(|l| l.contains("events received:")).unwrap_or("").trim();
        let lost = m.summary.lines().find(|l| l.contains("lost events:")).unwrap_or("").trim();
        let _ = writeln!(s, "That run's summary: {events}; {lost}.");
    }
    s += &targets(r);
    s
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn median_ratio(r: &Report, bench: &str, c: Config) -> Option<f64> {
    r.rows.iter().find(|x| x.bench == bench && x.config == c)?.ratio.map(|s| s.median)
}

/// " (ratios min–max)": how far to trust a median on a shared machine.
fn range(r: &Report, bench: &str, c: Config) -> String {
    r.rows
        .iter()
        .find(|x| x.bench == bench && x.config == c)
        .and_then(|x| x.ratio)
        .map(|s| format!(" (ratios {:.2}–{:.2}{})", s.min, s.max, if s.min < 1.0 && s.max > 1.0 { ", spans 1.00: within this run's noise" } else { "" }))
        .unwrap_or_default()
}

/// The targets, each with what this run measured.
fn targets(r: &Report) -> String {
    let mut s = String::from("\nTargets (issue 8), from this run's medians:\n\n");
    let mut line = |what: &str, got: Option<(bool, String)>| {
        let _ = match got {
            Some((ok, detail)) => writeln!(s, "- {} {what}: {detail}", if ok { "MET" } else { "MISSED" }),
            None => writeln!(s, "- NOT MEASURED {what}"),
        };
    };
    let cost = |ratio: f64| (1.0 - ratio) * 100.0;
    // With the floor measured: how much of the cost is attaching to the hooks at all.
    let floor = |bench: &str| {
        median_ratio(r, bench, Config::HooksOnly)
            .map(|f| format!("; the hooks alone (hooks-only) cost {:.1}%{}", cost(f), range(r, bench, Config::HooksOnly)))
            .unwrap_or_default()
    };
    for (bench, what, limit) in [("fault", "the page-fault loop", 5.0), ("mmap", "mmap/munmap", 15.0)] {
        line(
            &format!("default probes ≤ {limit:.0}% on {what}"),
            median_ratio(r, bench, Config::Default)
                .map(|x| (cost(x) <= limit, format!("cost {:.1}%{}{}", cost(x), range(r, bench, Config::Default), floor(bench)))),
        );
    }
    // The peer counts in maps; the streaming one sees every hit in userspace, as
    // --all-events does. Each is its own line, so neither hides the other.
    for b in r.rows.iter().filter(|x| x.config == Config::AllEvents).map(|x| x.bench.clone()) {
        for (peer, what) in [(Config::Bpftrace, "bpftrace"), (Config::BpftraceStream, "bpftrace streaming every hit (bpftrace-stream)")] {
            if peer == Config::BpftraceStream && median_ratio(r, &b, peer).is_none() {
                continue;
            }
            let got = median_ratio(r, &b, Config::AllEvents).zip(median_ratio(r, &b, peer)).map(|(v, p)| {
                (
                    v >= p,
                    format!("every-probe cost {:.1}%{} vs {} {:.1}%{}", cost(v), range(r, &b, Config::AllEvents), peer.name(), cost(p), range(r, &b, peer)),
                )
            });
            line(&format!("every probe cheaper than {what} on `{b}`"), got);
        }
    }
    line(
        "replay ≥ 5 M events/s",
        r.replays.iter().max_by(|a, b| a.events_per_cpu_s.total_cmp(&b.events_per_cpu_s)).map(|best| {
            let all: Vec<String> =
                r.replays.iter().map(|rp| format!("{} trace {:.2} M events/s per CPU-second", rp.format, rp.events_per_cpu_s / 1e6)).collect();
            (best.events_per_cpu_s >= 5e6, all.join("; "))
        }),
    );
    let peak = r
        .rows
        .iter()
        .filter(|x| matches!(x.config, Config::Default | Config::AllEvents | Config::Record))
        .filter_map(|x| Some((x.events_per_s?, x.lost_events.unwrap_or(0), x.bench.clone(), x.config)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    line(
        "zero lost events at 1 M events/s with the default ring",
        peak.map(|(rate, lost, b, c)| {
            let total_lost: u64 = r.rows.iter().filter(|x| !x.config.is_bpftrace()).filter_map(|x| x.lost_events).sum();
            (
                total_lost == 0 && rate >= 1e6,
                format!(
                    "highest rate reached {:.2} M events/s ({b}, {}) with {lost} lost; {total_lost} lost over all vmalock runs{}",
                    rate / 1e6,
                    c.name(),
                    if rate < 1e6 { " (1 M events/s was not reached by these benches)" } else { "" }
                ),
            )
        }),
    );
    s
}

pub fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

pub fn now_utc() -> String {
    crate::cmd::output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default().trim().to_string()
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {} , {cpus} CPUs ({cpu}), shared with other jobs", release.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: Config, ops_per_s: f64) -> Run {
        Run { bench: "fault".into(), config, repeat: 0, ops_per_s, events_received: None, lost_events: None, tracer_secs: None }
    }

    /// A report of `runs` on the fault bench with rows for `configs`, and nothing else.
    fn report(runs: &[Run], configs: &[Config]) -> Report {
        Report {
            hooks: String::new(),
            started: String::new(),
            machine: String::new(),
            command: String::new(),
            repeats: 1,
            seconds: 1.0,
            load: Vec::new(),
            rows: rows(runs, &["fault".into()], configs),
            runs: runs.to_vec(),
            profiles: Vec::new(),
            replays: Vec::new(),
            rss: None,
            dashboard: Vec::new(),
        }
    }

    /// A missed target says how much of the cost the hooks alone account for, when the floor
    /// configuration ran.
    #[test]
    fn a_missed_target_names_the_cost_of_the_hooks_alone() {
        let runs = [run(Config::Base, 100.0), run(Config::Default, 80.0), run(Config::Base, 100.0), run(Config::HooksOnly, 90.0)];
        let r = report(&runs, &[Config::Default, Config::HooksOnly]);
        let t = targets(&r);
        assert!(t.contains("- MISSED default probes ≤ 5% on the page-fault loop: cost 20.0% (ratios 0.80–0.80); the hooks alone (hooks-only) cost 10.0%"), "{t}");
        assert!(t.contains("- NOT MEASURED default probes ≤ 15% on mmap/munmap"), "{t}");
    }

    /// --all-events is compared with both peers when the streaming one ran, each on its own
    /// line; without it, only with the counting peer.
    #[test]
    fn every_probe_is_compared_with_each_peer_that_ran() {
        let runs = [
            run(Config::Base, 100.0),
            run(Config::AllEvents, 50.0),
            run(Config::Base, 100.0),
            run(Config::Bpftrace, 80.0),
            run(Config::Base, 100.0),
            run(Config::BpftraceStream, 30.0),
        ];
        let t = targets(&report(&runs, &[Config::AllEvents, Config::Bpftrace, Config::BpftraceStream]));
        assert!(t.contains("- MISSED every probe cheaper than bpftrace on `fault`: every-probe cost 50.0% (ratios 0.50–0.50) vs bpftrace 20.0%"), "{t}");
        assert!(
            t.contains("- MET every probe cheaper than bpftrace streaming every hit (bpftrace-stream) on `fault`: every-probe cost 50.0% (ratios 0.50–0.50) vs bpftrace-stream 70.0%"),
            "{t}"
        );
        let t = targets(&report(&runs, &[Config::AllEvents, Config::Bpftrace]));
        assert!(t.contains("- MISSED every probe cheaper than bpftrace on `fault`"), "{t}");
        assert!(!t.contains("bpftrace-stream"), "{t}");
    }
}
