//! Chrome Trace Event JSON (the format chrome://tracing and ui.perfetto.dev open):
//! one process per traced process, one thread track per task, mmap_lock waits and holds as
//! nested B/E slices, violations as thread instants carrying their explanation in `args`,
//! lock-order edges as flow arrows, other events as instants.
//!
//! Slices must nest per thread, but a task may release its locks in any order (take A, take B,
//! release A). Releasing a hold that is not the innermost closes the holds above it, closes it,
//! and reopens the others at the same instant, marked `continued`.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
};

use serde_json::{Value, json};

use super::{order::OrderEdge, pointers::Pseudonyms};
use crate::{
    event::{Event, What, kind_name},
    model::{Verdict, rule},
    trace::{Footer, Header},
};

/// One open slice on a thread.
struct Open {
    name: String,
    mm: u64,
    /// Waiting for the lock, not holding it yet.
    wait: bool,
    args: Value,
}

/// Where the built events go: Chrome JSON text, or Perfetto protobuf packets.
enum Sink<W: Write> {
    Json(W),
    Proto(super::perfetto::ProtoSink<W>),
}

pub struct ChromeWriter<W: Write> {
    out: Sink<W>,
    ptrs: Pseudonyms,
    /// Timestamps are µs since this CLOCK_MONOTONIC instant (the recording's start).
    base_ns: u64,
    last_ns: u64,
    any_written: bool,
    named: HashSet<(u32, u32)>,
    open: HashMap<u32, (u32, Vec<Open>)>,
    flows: u64,
    /// The last `Event::loss_epoch`: a change means events were lost somewhere.
    loss_epoch: u32,
}

/// Open slices per thread at most. Deeper means releases are missing from the trace (they were
/// not sent, or lost): the thread's slices are closed rather than piled up.
const MAX_DEPTH: usize = 16;

impl<W: Write> ChromeWriter<W> {
    pub fn new(mut out: W, header: &Header, ptrs: Pseudonyms) -> io::Result<Self> {
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
        Ok(Self::with_sink(Sink::Json(out), header, ptrs))
    }

    /// The same events as Perfetto protobuf (`vmalock export -f perfetto`).
    pub fn perfetto(out: W, header: &Header, ptrs: Pseudonyms) -> io::Result<Self> {
        let sink = super::perfetto::ProtoSink::new(out, header.monotonic_start_ns);
        Ok(Self::with_sink(Sink::Proto(sink), header, ptrs))
    }

    fn with_sink(out: Sink<W>, header: &Header, ptrs: Pseudonyms) -> Self {
        ChromeWriter {
            out,
            ptrs,
            base_ns: header.monotonic_start_ns,
            last_ns: header.monotonic_start_ns,
            any_written: false,
            named: HashSet::new(),
            open: HashMap::new(),
            flows: 0,
            loss_epoch: 0,
        }
    }

    /// µs with ns precision, as the format wants.
    fn ts(&self, ns: u64) -> f64 {
        ns.saturating_sub(self.base_ns) as f64 / 1000.0
    }

    fn emit(&mut self, v: Value) -> io::Result<()> {
        match &mut self.out {
            Sink::Json(out) => {
                if self.any_written {
                    out.write_all(b",\n")?;
                }
                self.any_written = true;
                serde_json::to_writer(out, &v)?;
            }
            Sink::Proto(p) => p.event(&v)?,
        }
        Ok(())
    }

    fn name_task(&mut self, ev: &Event) -> io::Result<()> {
        if !self.named.insert((ev.tgid, ev.tid)) {
            return Ok(());
        }
        if self.named.insert((ev.tgid, 0)) {
            self.emit(json!({"ph": "M", "name": "process_name", "ts": 0, "pid": ev.tgid, "tid": ev.tgid,
                "args": {"name": format!("{} ({})", ev.comm, ev.tgid)}}))?;
        }
        self.emit(json!({"ph": "M", "name": "thread_name", "ts": 0, "pid": ev.tgid, "tid": ev.tid,
            "args": {"name": format!("{} ({})", ev.comm, ev.tid)}}))
    }

    fn begin(&mut self, pid: u32, tid: u32, ns: u64, open: Open) -> io::Result<()> {
        self.emit(json!({"ph": "B", "cat": "mmap_lock", "name": open.name, "ts": self.ts(ns), "pid": pid, "tid": tid, "args": open.args}))?;
        self.open.entry(tid).or_insert((pid, Vec::new())).1.push(open);
        Ok(())
    }

    /// Closes the open slice at `idx` on `tid` at `ns`, keeping the others open (see the module doc).
    fn end(&mut self, tid: u32, idx: usize, ns: u64, why: Option<&str>) -> io::Result<()> {
        let Some((pid, mut stack)) = self.open.remove(&tid) else { return Ok(()) };
        let above = stack.split_off(idx + 1);
        for o in above.iter().rev() {
            self.emit(json!({"ph": "E", "name": o.name, "ts": self.ts(ns), "pid": pid, "tid": tid}))?;
        }
        let closed = stack.pop().expect("idx is in the stack");
        let args = why.map_or(json!({}), |w| json!({"end": w}));
        self.emit(json!({"ph": "E", "name": closed.name, "ts": self.ts(ns), "pid": pid, "tid": tid, "args": args}))?;
        self.open.insert(tid, (pid, stack));
        for mut o in above {
            o.args["continued"] = json!(true);
            self.begin(pid, tid, ns, o)?;
        }
        Ok(())
    }

    /// Closes every open slice of `tid` at `ns`.
    fn end_all(&mut self, tid: u32, ns: u64, why: &str) -> io::Result<()> {
        // Innermost first, so nothing is reopened.
        while let Some(top) = self.open.get(&tid).and_then(|(_, s)| s.len().checked_sub(1)) {
            self.end(tid, top, ns, Some(why))?;
        }
        self.open.remove(&tid);
        Ok(())
    }

    /// After a loss nobody knows what is held: every thread's slices end there, as the model
    /// forgets its state there.
    fn lost(&mut self, ev: &Event) -> io::Result<()> {
        let mut tids: Vec<u32> = self.open.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            self.end_all(tid, ev.ts_ns, "events were lost here: state unknown")?;
        }
        let ts = self.ts(ev.ts_ns);
        self.emit(json!({"ph": "i", "s": "g", "cat": "loss", "name": "events lost (ring buffer full)",
            "ts": ts, "pid": ev.tgid, "tid": ev.tid, "args": {"lost_on_this_cpu": ev.lost_before}}))
    }

    fn find(&self, tid: u32, mm: u64, wait: bool) -> Option<usize> {
        self.open.get(&tid)?.1.iter().rposition(|o| o.mm == mm && o.wait == wait)
    }

    fn instant(&mut self, ev: &Event, cat: &str, name: String) -> io::Result<()> {
        let mut args = serde_json::to_value(ev)?;
        self.ptrs.scrub_json(&mut args);
        self.emit(json!({"ph": "i", "s": "t", "cat": cat, "name": name, "ts": self.ts(ev.ts_ns), "pid": ev.tgid, "tid": ev.tid, "args": args}))
    }

    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.last_ns = self.last_ns.max(ev.ts_ns);
        if matches!(ev.what, What::Stack { .. }) {
            return Ok(());
        }
        self.name_task(ev)?;
        if ev.lost_before > 0 || ev.loss_epoch != self.loss_epoch {
            self.loss_epoch = ev.loss_epoch;
            self.lost(ev)?;
        }
        if self.open.get(&ev.tid).is_some_and(|(_, s)| s.len() >= MAX_DEPTH) {
            self.end_all(ev.tid, ev.ts_ns, "too deep: releases are missing from the trace")?;
        }
        let mode = |write: bool| if write { "write" } else { "read" };
        match &ev.what {
            What::MmapLockStart { mm, write, .. } => {
                let name = format!("wait mmap_lock {} {:#x}", mode(*write), self.ptrs.of(*mm));
                self.begin(ev.tgid, ev.tid, ev.ts_ns, Open { name, mm: *mm, wait: true, args: json!({}) })
            }
            What::MmapLockAcquired { mm, write, success, trylock, .. } => {
                if let Some(i) = self.find(ev.tid, *mm, true) {
                    self.end(ev.tid, i, ev.ts_ns, (!success).then_some("failed"))?;
                }
                if !success {
                    return Ok(());
                }
                let name = format!("mmap_lock {} {:#x}", mode(*write), self.ptrs.of(*mm));
                let args = json!({"mm": format!("{:#x}", self.ptrs.of(*mm)), "cpu": ev.cpu, "trylock": trylock});
                self.begin(ev.tgid, ev.tid, ev.ts_ns, Open { name, mm: *mm, wait: false, args })
            }
            What::MmapLockReleased { mm, .. } => match self.find(ev.tid, *mm, false) {
                Some(i) => self.end(ev.tid, i, ev.ts_ns, None),
                None => self.instant(ev, "mmap_lock", "release of a hold taken before tracing".into()),
            },
            What::TaskExit => {
                self.end_all(ev.tid, ev.ts_ns, "task exited")?;
                self.instant(ev, "task", "exit".into())
            }
            What::Missed { count, .. } => {
                let mut tids: Vec<u32> = self.open.keys().copied().collect();
                tids.sort_unstable();
                for tid in tids {
                    self.end_all(tid, ev.ts_ns, "hook hits were skipped here: state unknown")?;
                }
                let ts = self.ts(ev.ts_ns);
                self.emit(json!({"ph": "i", "s": "g", "cat": "loss", "name": format!("{count} hook hits skipped by the kernel"),
                    "ts": ts, "pid": ev.tgid, "tid": ev.tid}))
            }
            _ => self.instant(ev, "vma", kind_name(ev.kind()).into()),
        }
    }

    pub fn violation(&mut self, v: &Verdict) -> io::Result<()> {
        let r = rule(v.rule);
        let mut args = json!({
            "rule": v.rule,
            "what": v.what,
            "title": r.map_or("", |r| r.title),
            "why": r.map_or("", |r| r.explanation),
            "source": v.source,
            "fix": r.map_or("", |r| r.fix),
            "mm": format!("{:#x}", v.mm),
            "stack": v.stack,
            "events": v.events,
        });
        self.ptrs.scrub_json(&mut args);
        let ts = self.ts(v.ts_ns);
        self.emit(json!({"ph": "i", "s": "t", "cat": "violation", "name": format!("VIOLATION {}", v.rule),
            "ts": ts, "pid": v.task.tgid, "tid": v.task.tid, "args": args}))
    }

    /// A flow arrow from the holding acquisition to the nested one.
    pub fn edge(&mut self, e: &OrderEdge) -> io::Result<()> {
        self.flows += 1;
        let id = self.flows;
        let name = self.ptrs.scrub_text(&e.label);
        let (from, to) = (self.ts(e.from.ts_ns), self.ts(e.to.ts_ns));
        self.emit(json!({"ph": "s", "cat": "lock_order", "name": name, "id": id, "ts": from, "pid": e.from.pid, "tid": e.from.tid}))?;
        self.emit(json!({"ph": "f", "bp": "e", "cat": "lock_order", "name": name, "id": id, "ts": to, "pid": e.to.pid, "tid": e.to.tid}))
    }

    /// Closes every slice still open (held when the recording stopped) and ends the JSON.
    pub fn finish(mut self, header: &Header, footer: Option<&Footer>) -> io::Result<W> {
        let end = footer.map_or(self.last_ns, |f| self.last_ns.max(header.monotonic_start_ns + f.duration_ns));
        let mut tids: Vec<u32> = self.open.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            self.end_all(tid, end, "still held when the recording stopped")?;
        }
        let other = json!({
            "tool": format!("vmalock {}", header.tool_version),
            "kernel_release": header.kernel_release,
            "clock": header.clock,
            "monotonic_start_ns": header.monotonic_start_ns,
            "pointers": if self.ptrs.is_raw() { "raw kernel addresses" } else { "per-trace pseudonyms (order of first appearance)" },
            "lost_events": footer.map(|f| f.lost_events),
        });
        match self.out {
            Sink::Json(mut out) => {
                write!(out, "\n],\"otherData\":{other}}}\n")?;
                out.flush()?;
                Ok(out)
            }
            Sink::Proto(p) => p.finish(&other, end),
        }
    }
}
