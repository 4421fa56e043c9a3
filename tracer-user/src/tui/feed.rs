//! What the dashboard is fed, from a live run or a replayed trace, over a bounded channel.
//!
//! The ingest side never waits for the screen: it batches verdicts and sends with `try_send`;
//! when the channel is full the batch is kept and sent with the next one. The screen drains the
//! channel at its own frame rate.

use std::{
    collections::VecDeque,
    io::BufRead,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
};

use crate::{
    event::What,
    export::order::{OrderEdge, new_edges},
    model::{Model, RULES, Verdict},
    observe::{Observer, Started, Tick},
    trace::{TraceError, TraceReader},
};

/// One message from ingest to the screen.
#[derive(Clone, Debug)]
pub enum Update {
    Started(Started),
    Verdicts(Vec<Verdict>),
    Edges(Vec<OrderEdge>),
    Tick(Tick),
    /// The run ended; why.
    Ended(String),
}

/// Messages in flight at most; past that ingest holds its batch (verdicts are never dropped,
/// up to `MAX_PENDING`, beyond which the oldest pending are counted and dropped).
pub const CHANNEL: usize = 64;
const MAX_PENDING: usize = 100_000;

pub fn channel() -> (SyncSender<Update>, Receiver<Update>) {
    sync_channel(CHANNEL)
}

/// The live run's [`Observer`] for the dashboard.
pub struct Feed {
    tx: SyncSender<Update>,
    pending: VecDeque<Verdict>,
    edges: Vec<OrderEdge>,
    /// Verdicts dropped because the screen fell `MAX_PENDING` behind.
    pub dropped: u64,
    stop: Arc<AtomicBool>,
}

impl Feed {
    pub fn new(tx: SyncSender<Update>, stop: Arc<AtomicBool>) -> Self {
        Feed { tx, pending: VecDeque::new(), edges: Vec::new(), dropped: 0, stop }
    }

    fn send(&mut self, u: Update) -> bool {
        match self.tx.try_send(u) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The screen is gone (quit): ingest winds down through stop_requested.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }

    fn flush(&mut self) {
        if !self.edges.is_empty() {
            let e = std::mem::take(&mut self.edges);
            if let Err(TrySendError::Full(Update::Edges(e))) = self.tx.try_send(Update::Edges(e)) {
                self.edges = e;
            }
        }
        if !self.pending.is_empty() {
            let batch: Vec<Verdict> = self.pending.drain(..).collect();
            if let Err(TrySendError::Full(Update::Verdicts(b))) = self.tx.try_send(Update::Verdicts(batch)) {
                self.pending = b.into();
            }
        }
    }
}

impl Observer for Feed {
    fn started(&mut self, s: &Started) {
        // Sent before anything else, into an empty channel.
        let _ = self.send(Update::Started(s.clone()));
    }

    fn order_edges(&mut self, e: &[OrderEdge]) {
        self.edges.extend_from_slice(e);
    }

    fn verdict(&mut self, v: &Verdict) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(v.clone());
    }

    fn tick(&mut self, t: &Tick) {
        self.flush();
        // A tick that does not fit is simply skipped: the next one carries totals.
        let _ = self.send(Update::Tick(t.clone()));
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn stop_signal(&self) -> Option<&'static str> {
        super::TERMINATE.load(Ordering::Relaxed).then_some("SIGTERM")
    }

    fn wants_ticks(&self) -> bool {
        true
    }
}

/// Replays a trace into updates, one tick per `tick_ns` of trace time (and one at the end), as
/// a live run would have sent them. Used by `watch --replay` and the dashboard's tests.
pub fn replay<R: BufRead>(input: R, name: &str, tick_ns: u64, mut send: impl FnMut(Update)) -> Result<(), TraceError> {
    let (header, reader) = TraceReader::open(input)?;
    send(Update::Started(Started {
        target: format!("replay of {name}"),
        kernel_release: header.kernel_release.clone(),
        hooks: format!("recorded by vmalock {}", header.tool_version),
        ring_bytes: 0,
        rules: RULES.iter().map(|r| (r.id, r.title, if r.implemented { "in the recording's rules" } else { "not implemented yet" }.to_string())).collect(),
    }));
    let mut model = Model::new();
    let mut known_edges = 0;
    let (mut found, mut edges) = (Vec::new(), Vec::new());
    let (mut events, mut verdicts, mut next_tick) = (0u64, 0u64, None::<u64>);
    let mut last_ts = header.monotonic_start_ns;
    let tick = |model: &Model, ts_ns, events, verdicts| {
        let (held, waiting) = Tick::locks_of(model);
        Update::Tick(Tick {
            ts_ns,
            seen: model.stats().events.iter().collect(),
            events_received: events,
            lost: model.stats().lost_events,
            missed: model.stats().missed_events,
            ring_fill: 0.0,
            verdicts,
            held,
            waiting,
            held_other: Tick::other_locks_of(model),
        })
    };
    for ev in reader {
        let ev = ev?;
        let due = *next_tick.get_or_insert(ev.ts_ns + tick_ns);
        if ev.ts_ns >= due {
            send(tick(&model, due, events, verdicts));
            next_tick = Some(due + tick_ns * ((ev.ts_ns - due) / tick_ns + 1));
        }
        last_ts = last_ts.max(ev.ts_ns);
        if !matches!(ev.what, What::Stack { .. } | What::Missed { .. }) {
            events += 1;
        }
        model.apply(&ev, &mut found);
        new_edges(&model, &mut known_edges, &mut edges);
        if !edges.is_empty() {
            send(Update::Edges(std::mem::take(&mut edges)));
        }
        if !found.is_empty() {
            verdicts += found.len() as u64;
            send(Update::Verdicts(std::mem::take(&mut found)));
        }
    }
    send(tick(&model, last_ts, events, verdicts));
    send(Update::Ended("end of the recording".into()));
    Ok(())
}
