//! The overhead runs inside a test guest (`cargo xtask bench --guest debian-7.2`), where every
//! function hook attaches. Under QEMU/TCG absolute rates mean nothing; the traced ÷ untraced
//! ratios of neighbouring runs still compare configurations. bpftrace is not in the guest's
//! initramfs (busybox and static binaries only), so the guest has no peer column.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use super::micro::{self, Config, Run};

/// The guest's shell script: every bench × repeat × (base, traced) pair, each run's output
/// behind a `VMALOCK-BENCH-RUN bench config repeat` line.
fn script(benches: &[String], configs: &[Config], repeats: usize, seconds: f64) -> String {
    let mut s = String::from(
        "cd /tmp\n\
         run() {\n  b=$1; c=$2; r=$3; shift 3\n  \"$@\" > /tmp/o 2> /tmp/e\n  echo \"VMALOCK-BENCH-RUN $b $c $r status=$?\"\n  \
         grep -h -E 'vmalock-bench-load:|vmalock: stopped:|events received:|lost events:' /tmp/o /tmp/e\n}\n",
    );
    for b in benches {
        let load = format!("vmalock-bench-load {b} --seconds {seconds}");
        for r in 0..repeats {
            for &c in configs {
                let traced = match c {
                    Config::Default => format!("vmalock run -c '{load}'"),
                    Config::AllEvents => format!("vmalock run --all-events -c '{load}'"),
                    Config::Record => format!("vmalock record -o /tmp/bench.trace -c '{load}'"),
                    Config::Base | Config::Bpftrace => continue,
                };
                let _ = writeln!(s, "run {b} base {r} {load}");
                let _ = writeln!(s, "run {b} {} {r} {traced}", c.name());
            }
        }
    }
    s
}

/// Boots `kernel`, runs the script, and reads the runs back from the serial log.
pub fn run(kernel: &str, benches: &[String], configs: &[Config], repeats: usize, seconds: f64) -> Result<Vec<Run>> {
    let script = script(benches, configs, repeats, seconds);
    crate::vm::run_command(kernel, &script, std::time::Duration::from_secs(3000))?;
    let log = crate::vm::report_dir().join(format!("{kernel}.run.log"));
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok(parse_log(&text))
}

fn parse_log(text: &str) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut current: Option<(String, Config, usize, String)> = None;
    let finish = |cur: Option<(String, Config, usize, String)>, runs: &mut Vec<Run>| {
        if let Some((b, c, r, out)) = cur {
            match micro::parse(&b, c, r, &out, &out) {
                Ok(run) => runs.push(run),
                Err(e) => println!("bench: guest run {b} {} #{r} unreadable: {e:#}", c.name()),
            }
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("VMALOCK-BENCH-RUN ") {
            finish(current.take(), &mut runs);
            let w: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(b), Some(Ok(c)), Some(Ok(r))) = (w.first(), w.get(1).map(|c| Config::parse(c)), w.get(2).map(|r| r.parse())) {
                current = Some((b.to_string(), c, r, String::new()));
            }
        } else if let Some((_, _, _, out)) = current.as_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    finish(current, &mut runs);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runs_back_from_the_serial_log() {
        let log = "noise\nVMALOCK-BENCH-RUN mmap base 0 status=0\nvmalock-bench-load: bench=mmap threads=1 ops=10 secs=1.0 ops_per_s=100.0\n\
                   VMALOCK-BENCH-RUN mmap default 0 status=0\nvmalock-bench-load: bench=mmap threads=1 ops=5 secs=1.0 ops_per_s=50.0\n\
                   vmalock: stopped: command exited with status 0 after 2.000 s\n  events received: 400 (x)\n  lost events: 0 (per CPU: [0])\n";
        let runs = parse_log(log);
        assert_eq!(runs.len(), 2);
        assert_eq!(micro::ratios(&runs, "mmap", Config::Default), vec![0.5]);
        assert_eq!(runs[1].events_received, Some(400));
        assert_eq!(runs[1].tracer_secs, Some(2.0));
    }

    #[test]
    fn the_script_pairs_each_traced_run_with_a_base_run() {
        let s = script(&["fork".into()], &[Config::Default, Config::Bpftrace], 2, 1.0);
        assert_eq!(s.matches("run fork base").count(), 2);
        assert_eq!(s.matches("run fork default").count(), 2);
        assert!(!s.contains("bpftrace"));
    }
}
