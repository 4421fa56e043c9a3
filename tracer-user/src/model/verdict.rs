//! Verdicts: what the model reports when a rule is broken.
//!
//! The `Display` line is the single format shared by live runs and `vmalock check`, so the two
//! can be compared byte for byte; keep it stable.

use std::fmt;

use serde::Serialize;

use super::rules;
use crate::event::{Event, What, kind_name};

/// The task a verdict is about, as the offending event named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskRef {
    pub tid: u32,
    pub tgid: u32,
    pub comm: crate::event::Comm,
}

impl From<&Event> for TaskRef {
    fn from(ev: &Event) -> Self {
        TaskRef {
            tid: ev.tid,
            tgid: ev.tgid,
            comm: ev.comm,
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.tid, self.tgid, self.comm)
    }
}

/// One broken rule, with the events that prove it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub rule: &'static str,
    /// One line: what happened.
    pub what: String,
    /// Kernel source citation, from the rule.
    pub source: &'static str,
    pub task: TaskRef,
    #[serde(with = "crate::event::hex")]
    pub mm: u64,
    /// CLOCK_MONOTONIC ns of the offending event.
    pub ts_ns: u64,
    /// The proving events, oldest first.
    pub events: Vec<Event>,
    /// The kernel stack of the offending site, innermost first, symbolized when recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// lock-order: the dependency edges proving it (one for an inversion, the whole cycle for
    /// a circular dependency), each with its task and both acquisitions' stacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<super::lockorder::ChainLink>,
}

impl Verdict {
    /// A verdict for `rule` about the offending event `ev`; `source` comes from the catalogue
    /// so every report cites the same place.
    pub(crate) fn new(
        rule: &'static str,
        what: String,
        ev: &Event,
        mm: u64,
        events: Vec<Event>,
    ) -> Self {
        Verdict {
            rule,
            what,
            source: rules::rule(rule).map_or("", |r| r.source),
            task: TaskRef::from(ev),
            mm,
            ts_ns: ev.ts_ns,
            events,
            stack: Vec::new(),
            chain: Vec::new(),
        }
    }

    /// The proving events, one line each (as in [`Verdict::explain`]).
    pub fn event_lines(&self) -> Vec<String> {
        self.events.iter().map(|e| EventLine(e).to_string()).collect()
    }

    /// What `run` and `check` print for a verdict: its line, and for a lock-order verdict the
    /// dependency chain with symbolized stacks (lockdep's report), indented under it.
    pub fn report(&self) -> String {
        if self.chain.is_empty() { format!("{self}\n") } else { format!("{self}\n{}", self.lockdep_report()) }
    }

    /// A multi-line explanation for humans: the verdict line, the rule, and the proof.
    pub fn explain(&self) -> String {
        let mut s = format!("{self}\n");
        if let Some(r) = rules::rule(self.rule) {
            s += &format!("  rule:   {} — {}\n", r.id, r.title);
            s += &format!("  why:    {}\n", r.explanation);
            s += &format!("  source: {}\n", r.source);
            s += &format!("  fix:    {}\n", r.fix);
        }
        s += "  events:\n";
        for ev in &self.events {
            s += &format!("    {}\n", EventLine(ev));
        }
        if !self.stack.is_empty() {
            s += "  stack:\n";
            for f in &self.stack {
                s += &format!("    {f}\n");
            }
        }
        if !self.chain.is_empty() {
            s += &self.lockdep_report();
        }
        s
    }

    /// The chain, the way lockdep prints "possible circular locking dependency detected":
    /// each dependency with the task that created it and the stacks of both acquisitions.
    pub fn lockdep_report(&self) -> String {
        let mut s = String::from("  the existing dependency chain (in order of the cycle):\n");
        if self.chain.len() == 1 {
            s = String::from("  the dependency that contradicts the documented order:\n");
        }
        for (i, l) in self.chain.iter().enumerate() {
            s += &format!(
                "    -> #{i} {} -> {} [{}] first by task {} at {}: held {} ({}), took {} ({})\n",
                l.from,
                l.to,
                l.deps.join(","),
                l.task,
                Secs(l.ts_ns),
                l.from,
                l.held_take,
                l.to,
                l.taken_take
            );
            if let Some(c) = &l.contradicts {
                s += &format!("       contradicts: {c}\n");
            }
            for (what, id, frames) in [("held", l.held_stack_id, &l.held_stack), ("taken", l.taken_stack_id, &l.taken_stack)] {
                match (id, frames.is_empty()) {
                    (_, false) => {
                        s += &format!("       {what} at:\n");
                        for f in frames {
                            s += &format!("         {f}\n");
                        }
                    }
                    (Some(id), true) => s += &format!("       {what} at: stack {id} (not symbolized in this stream)\n"),
                    // Not every acquisition walks its stack: a default run one per lock chain a second
                    // (locks.rs chain_stack_id), legal VMA write locks one per CPU every 10 ms.
                    (None, true) => s += &format!("       {what} at: no stack recorded (README: \"One stack per lock chain a second\")\n"),
                }
            }
        }
        s
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VIOLATION {}: {} — task {} mm {:#x} at {} [{}]",
            self.rule,
            self.what,
            self.task,
            self.mm,
            Secs(self.ts_ns),
            self.source
        )
    }
}

/// Nanoseconds as `S.NNNNNNNNNs`: exact, unlike going through f64.
struct Secs(u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// One proving event on one line.
struct EventLine<'a>(&'a Event);

impl fmt::Display for EventLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ev = self.0;
        let mode = |write: bool| if write { "write" } else { "read" };
        // "~": a default run kept this acquire in the kernel, its time is up to a tick early.
        write!(
            f,
            "{}{} cpu {} task {} {}",
            if ev.ts_coarse { "~" } else { "" },
            Secs(ev.ts_ns),
            ev.cpu,
            TaskRef::from(ev),
            kind_name(ev.kind())
        )?;
        let vma_read = |v: Option<u64>| v.map(|v| format!(" holding VMA {v:#x} read-locked")).unwrap_or_default();
        match &ev.what {
            What::MmapLockStart { mm, write, vma_read: v } => write!(f, " mm {mm:#x} {}{}", mode(*write), vma_read(*v)),
            What::MmapLockReleased { mm, write } => write!(f, " mm {mm:#x} {}", mode(*write)),
            What::MmapLockAcquired { mm, write, success, vma_read: v, trylock } => write!(
                f,
                " mm {mm:#x} {}{}{}{}",
                mode(*write),
                if *success { "" } else { " failed" },
                vma_read(*v),
                if *trylock { " (trylock)" } else { "" }
            ),
            What::TaskExit => Ok(()),
            What::VmaWriteLock { mm, vma, facts } => {
                write!(f, " mm {mm:#x} vma {vma:#x} [{}]", facts.names().join(" "))
            }
            What::PageWalk { mm, vma, walk_lock, site, facts } => write!(
                f,
                " {} mm {mm:#x} vma {vma:#x} {} [{}]",
                crate::event::site_name(*site),
                walk_lock.map_or("no walk_lock", |w| w.name()),
                facts.names().join(" ")
            ),
            What::PageWalkVma { mm, vma, walk_lock, facts } => write!(
                f,
                " mm {mm:#x} vma {vma:#x} {} [{}]",
                walk_lock.map_or("no walk_lock", |w| w.name()),
                facts.names().join(" ")
            ),
            What::VmaPrepare { mm, vma, unlocked, facts, .. } => {
                write!(f, " mm {mm:#x} vma {vma:#x} unlocked [{}] [{}]", unlocked.join(" "), facts.names().join(" "))
            }
            What::VmaNew { mm, vma, site, facts } => {
                write!(f, " {} mm {mm:#x} vma {vma:#x} [{}]", crate::event::site_name(*site), facts.names().join(" "))
            }
            What::VmaSnapshot { mm, vma, vm_start, changes, flags_changed, facts } => write!(
                f,
                " mm {mm:#x} vma {vma:#x} at {vm_start:#x} changed [{}] flags {flags_changed:#x} [{}]",
                changes.join(" "),
                facts.names().join(" ")
            ),
            What::VmaModified { mm, vma, site, changes, flags_before, flags_after, facts } => write!(
                f,
                " {} mm {mm:#x} vma {vma:#x} changed [{}] flags {flags_before:#x} -> {flags_after:#x} [{}]",
                crate::event::site_name(*site),
                changes.join(" "),
                facts.names().join(" ")
            ),
            What::LockAcquire { class, lock, write, trylock, success, vma_read: v } => write!(
                f,
                " {} {lock:#x} {}{}{}{}",
                class.name(),
                mode(*write),
                if *trylock { " (trylock)" } else { "" },
                if *success { "" } else { " failed" },
                vma_read(*v)
            ),
            What::LockRelease { class, lock, write } => write!(f, " {} {lock:#x} {}", class.name(), mode(*write)),
            What::Stack { id, frames } => write!(f, " stack {id}: {} frames", frames.len()),
            What::Missed { count, span } => write!(f, " {count} hook hits skipped by the kernel within the next {span} events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: u64, what: What) -> Event {
        Event {
            ts_ns,
            cpu: 2,
            tid: 1234,
            tgid: 1230,
            comm: "worker".into(),
            task_new: false,
            ts_coarse: false,
            lost_before: 0,
            loss_epoch: 0,
            stack: None,
            what,
        }
    }

    fn sample() -> Verdict {
        let acq = ev(
            5,
            What::MmapLockAcquired {
                mm: 0xffff_8880_0000_1000,
                write: true,
                success: true, vma_read: None, trylock: false },
        );
        let rel = ev(
            12_345_678_901,
            What::MmapLockReleased {
                mm: 0xffff_8880_0000_1000,
                write: false,
            },
        );
        Verdict::new(
            rules::MMAP_LOCK_BALANCE,
            "mmap_lock released for read while held for write".into(),
            &rel,
            0xffff_8880_0000_1000,
            vec![acq, rel.clone()],
        )
    }

    #[test]
    fn display_is_one_stable_line() {
        let source = rules::rule(rules::MMAP_LOCK_BALANCE).unwrap().source;
        assert_eq!(
            sample().to_string(),
            format!(
                "VIOLATION mmap-lock-balance: mmap_lock released for read while held for write — \
                 task 1234/1230 (worker) mm 0xffff888000001000 at 12.345678901s [{source}]"
            )
        );
    }

    #[test]
    fn explain_names_rule_fix_and_each_event() {
        let text = sample().explain();
        let rule = rules::rule(rules::MMAP_LOCK_BALANCE).unwrap();
        assert!(text.starts_with(&sample().to_string()));
        assert!(
            text.contains(rule.title) && text.contains(rule.fix) && text.contains(rule.explanation)
        );
        assert!(text.contains(
            "0.000000005s cpu 2 task 1234/1230 (worker) mmap_lock_acquire_returned mm 0xffff888000001000 write\n"
        ));
        assert!(text.contains("12.345678901s cpu 2 task 1234/1230 (worker) mmap_lock_released mm 0xffff888000001000 read\n"));
    }

    #[test]
    fn a_kept_acquires_tick_time_is_marked() {
        let mut v = sample();
        v.events[0].ts_coarse = true;
        let text = v.explain();
        assert!(text.contains("~0.000000005s cpu 2 task 1234/1230 (worker) mmap_lock_acquire_returned"), "{text}");
        assert!(text.contains(" 12.345678901s cpu 2 task 1234/1230 (worker) mmap_lock_released"), "{text}");
        assert!(!text.contains("~12.345678901s"), "{text}");
    }

    #[test]
    fn json_has_hex_mm_and_events() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["mm"], "0xffff888000001000");
        assert_eq!(json["rule"], "mmap-lock-balance");
        assert_eq!(json["task"]["tid"], 1234);
        assert_eq!(json["events"].as_array().unwrap().len(), 2);
    }
}
