//! Where a live run's results go: the streaming text report (`run`, and whenever stdout is not a
//! terminal) or the dashboard (`watch`). The run calls an [`Observer`]; the observer decides
//! what to show and never blocks the run.

use std::io::Write as _;

use serde::Serialize;

use crate::{
    event::Event,
    model::{Mode, Model, TaskRef, Verdict},
};

/// What a run is watching, told once when events start to flow.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Started {
    /// "all tasks", "pid N", "command (pid N)", or a replayed file.
    pub target: String,
    pub kernel_release: String,
    /// Hooks and their families, one line.
    pub hooks: String,
    pub ring_bytes: u64,
    /// Every rule in the catalogue: (id, title, what this run can do with it).
    pub rules: Vec<(&'static str, &'static str, String)>,
}

/// mmap_locks each task holds: (task, [(mm, mode, nesting)]).
pub type Holds = Vec<(TaskRef, Vec<(u64, Mode, u32)>)>;
/// Tasks waiting for an mmap_lock: (task, mm, mode, since ns).
pub type Waits = Vec<(TaskRef, u64, Mode, u64)>;

/// The state of the run about every [`TICK`]: counters are totals since the start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tick {
    /// CLOCK_MONOTONIC ns (trace time in a replay).
    pub ts_ns: u64,
    /// Hook hits per probe kind, counted in the kernel (in a replay: events per kind).
    pub seen: Vec<(&'static str, u64)>,
    pub events_received: u64,
    /// Events dropped because the ring buffer was full.
    pub lost: u64,
    /// Hook hits the kernel skipped (BPF recursion protection).
    pub missed: u64,
    /// Highest share of the ring buffer one drain found filled since the last tick (0..=1).
    pub ring_fill: f64,
    pub verdicts: u64,
    /// mmap_locks each task holds now: (mm, mode, nesting).
    pub held: Holds,
    /// Tasks waiting for an mmap_lock: (task, mm, mode, since ns).
    pub waiting: Waits,
    /// Locks of the other classes each task holds now (see `Model::held_other`).
    pub held_other: Vec<(TaskRef, Vec<String>)>,
}

impl Tick {
    /// The model's side of a tick: held and waiting locks, sorted so displays are stable.
    pub fn locks_of(model: &Model) -> (Holds, Waits) {
        let mut held: Vec<_> = model.held().filter(|(_, h)| !h.is_empty()).collect();
        held.sort_by_key(|(t, _)| (t.tgid, t.tid));
        let mut waiting: Vec<_> = model.waiting().collect();
        waiting.sort_by_key(|(t, ..)| (t.tgid, t.tid));
        (held, waiting)
    }

    /// [`Tick::held_other`] of `model`, sorted like `held`.
    pub fn other_locks_of(model: &Model) -> Vec<(TaskRef, Vec<String>)> {
        let mut other: Vec<_> = model.held_other().collect();
        other.sort_by_key(|(t, _)| (t.tgid, t.tid));
        other
    }
}

/// How often a live run hands its state to the observer.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);

pub trait Observer: Send {
    fn started(&mut self, _: &Started) {}
    /// Every event, in model order (cheap: called on the ingest path).
    fn event(&mut self, _: &Event) {}
    fn verdict(&mut self, v: &Verdict);
    /// Lock-order edges the model learned with the last event, each once.
    fn order_edges(&mut self, _: &[crate::export::order::OrderEdge]) {}
    fn tick(&mut self, _: &Tick) {}
    /// Whether to build ticks at all (they read kernel counters and walk the model's tasks:
    /// the text report does without).
    fn wants_ticks(&self) -> bool {
        false
    }
    /// Polled at every drain: the user asked the run to end (the dashboard's `q`).
    fn stop_requested(&self) -> bool {
        false
    }
    /// The signal behind a stop request, if one was (the dashboard catches SIGTERM itself
    /// while the run's own handler may not be installed yet): the stop reason names it.
    fn stop_signal(&self) -> Option<&'static str> {
        None
    }
}

/// The streaming text report: one line per violation on stdout, as it is found (the summary
/// goes to stderr when the run ends).
pub struct PrintVerdicts;

impl Observer for PrintVerdicts {
    fn verdict(&mut self, v: &Verdict) {
        let mut out = std::io::stdout().lock();
        // The verdict line, and a lock-order verdict's chain under it (lockdep's report).
        let _ = write!(out, "{}", v.report());
        // Piped output is block-buffered: a reader (CI log, `| grep`) sees each line now.
        let _ = out.flush();
    }
}
