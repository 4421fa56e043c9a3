//! The end-of-run summary printed to stderr (bpftrace-style: what was seen, what was lost).

use std::fmt;

use crate::{
    hooks::HookState,
    loader::{Attached, Counters},
    model::{RULES, Stats, Status},
};

pub struct Summary {
    pub stop_reason: String,
    pub duration_ns: u64,
    /// The daemon's CPU time (all its threads, user + system) from attaching to the stop:
    /// draining, judging, snapshots, writing. The BPF programs' time is the traced tasks'.
    pub tracing_cpu_ns: u64,
    /// Hook hits that passed the filter, by kind (counted in the kernel, sent or not).
    pub seen: Vec<(&'static str, u64)>,
    pub stats: Stats,
    pub lost_per_cpu: Vec<u64>,
    /// Hook hits the kernel skipped before our program ran (bpf_prog_info.recursion_misses).
    pub missed: u64,
    pub decode_errors: u64,
    pub events_received: u64,
    pub verdicts: usize,
    pub attached: Attached,
    pub counters: Counters,
}

impl Summary {
    pub fn lost(&self) -> u64 {
        self.lost_per_cpu.iter().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vmalock: stopped: {} after {:.3} s", self.stop_reason, self.duration_ns as f64 / 1e9)?;
        let hooks: Vec<String> = self.attached.hooks.iter().map(|(h, fam)| format!("{h} ({fam})")).collect();
        writeln!(f, "  hooks: {}", hooks.join(", "))?;
        for (h, why) in &self.attached.not_needed {
            writeln!(f, "  not attached: {h}: {why}")?;
        }
        for (hook, why) in &self.attached.fallbacks {
            writeln!(f, "  fallback for {hook}: {why}")?;
        }
        let fns: Vec<String> = self
            .attached
            .functions
            .iter()
            .filter_map(|(func, s)| match s {
                HookState::Attached(fam) => Some(format!("{func} ({fam})")),
                HookState::Unavailable(_) => None,
            })
            .collect();
        let unavailable = self.attached.functions.values().filter(|s| matches!(s, HookState::Unavailable(_))).count();
        writeln!(
            f,
            "  function hooks: {}{}",
            if fns.is_empty() { "none".to_string() } else { fns.join(", ") },
            if unavailable > 0 { format!(" ({unavailable} unavailable: see `vmalock probe`)") } else { String::new() }
        )?;
        writeln!(
            f,
            "  VMA snapshots: {} ({} passes, {} VMAs compared)",
            self.attached.snapshot, self.counters.snapshot_rounds, self.counters.snapshot_vmas
        )?;
        // What each rule could use in this run, so a rule that could not be checked is never
        // mistaken for one that passed.
        let avail = self.attached.availability();
        let mut by_status: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for r in RULES {
            let st = match r.status(&avail) {
                Status::Live => "checked live".to_string(),
                Status::SnapshotOnly => "checked by snapshot only".to_string(),
                Status::NotApplicable(_) => "not applicable to this kernel".to_string(),
                Status::Unavailable(_) => "NOT CHECKED (hooks unavailable)".to_string(),
                Status::NotImplemented => "not implemented".to_string(),
            };
            by_status.entry(st).or_default().push(r.id);
        }
        for (st, ids) in &by_status {
            writeln!(f, "  rules {st}: {}", ids.join(", "))?;
        }
        if self.counters.vma_read_taken > 0 {
            writeln!(
                f,
                "  per-VMA read locks (counted in the kernel): {} taken, {} seen released",
                self.counters.vma_read_taken, self.counters.vma_read_dropped
            )?;
        }
        let seen: Vec<String> = self.seen.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  hook hits: {}", if seen.is_empty() { "none".into() } else { seen.join(", ") })?;
        let recv: Vec<String> = self.stats.events.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  events received: {} ({})", self.events_received, recv.join(", "))?;
        if self.counters.folded_pairs > 0 {
            writeln!(
                f,
                "  balanced mmap_lock pairs folded in the kernel (not sent; `record` or --all-events sends them): {}",
                self.counters.folded_pairs
            )?;
        }
        if self.counters.legal_kept > 0 {
            writeln!(
                f,
                "  VMA events legal at the hook, kept in the kernel (not sent; `record` or --all-events sends them): {}",
                self.counters.legal_kept
            )?;
        }
        if self.counters.lock_pairs_folded > 0 {
            writeln!(
                f,
                "  lock-order rwsem pairs along a chain sent within the second, dropped in the kernel (`record` or --all-events sends them): {}",
                self.counters.lock_pairs_folded
            )?;
        }
        if !self.counters.program_times.is_empty() {
            let t: Vec<String> =
                self.counters.program_times.iter().map(|p| format!("{} {}×{}", p.name, p.run_time_ns / p.runs.max(1), p.runs)).collect();
            writeln!(f, "  BPF run time (kernel.bpf_stats_enabled=1; avg ns × runs, busiest first): {}", t.join(", "))?;
        }
        writeln!(
            f,
            "  tracer CPU while tracing: {:.3} s ({:.1}% of one CPU)",
            self.tracing_cpu_ns as f64 / 1e9,
            100.0 * self.tracing_cpu_ns as f64 / self.duration_ns.max(1) as f64
        )?;
        writeln!(f, "  lost events: {} (per CPU: {:?})", self.lost(), self.lost_per_cpu)?;
        writeln!(f, "  missed hook hits (kernel recursion protection): {}", self.missed)?;
        if self.decode_errors > 0 {
            writeln!(f, "  undecodable records: {}", self.decode_errors)?;
        }
        if self.stats.pre_existing_releases > 0 {
            writeln!(f, "  releases of locks taken before tracing began (not judged): {}", self.stats.pre_existing_releases)?;
        }
        if self.stats.non_owner_releases > 0 {
            writeln!(f, "  non-owner read releases: {}", self.stats.non_owner_releases)?;
        }
        write!(f, "  violations: {}", self.verdicts)?;
        for (rule, n) in &self.stats.verdicts {
            write!(f, "\n    {rule}: {n}")?;
        }
        Ok(())
    }
}
