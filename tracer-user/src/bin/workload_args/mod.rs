//! Command-line handling shared by the test workloads (vmalock-workload, vmalock-mix): numeric
//! options, and the start gate (`--sleep-first MS`, `--wait-for PATH`) that gives a tracer time to
//! attach.

use std::{thread, time::Duration};

/// The number after `name`, or `default`.
pub fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, got {v}")))
        .unwrap_or(default)
}

/// Sleeps `--sleep-first` ms, then waits until `--wait-for PATH` exists.
pub fn wait_to_start(args: &[String]) {
    let sleep_ms = arg(args, "--sleep-first", 0);
    if sleep_ms > 0 {
        thread::sleep(Duration::from_millis(sleep_ms));
    }
    if let Some(path) = args.iter().position(|a| a == "--wait-for").and_then(|i| args.get(i + 1)) {
        while !std::path::Path::new(path).exists() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}
