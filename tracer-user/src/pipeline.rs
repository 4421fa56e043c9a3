//! Events from the ring buffer into the model and the trace file, in one order that a replay
//! reproduces exactly, with the kernel's silent misses marked where they may have happened.
//!
//! The kernel skips a hook hit without a trace when the same program is already running on
//! that CPU (BPF recursion protection): since tracepoint probes became preemptible, a task
//! preempted inside our program makes other tasks' hits there vanish. The count is only
//! readable from userspace (`bpf_prog_info.recursion_misses`), so each pump reads it *before*
//! draining, and the model runs one drain behind: a miss seen at pump k happened after the read
//! of pump k-1, so a marker placed before the batch drained at pump k-1 precedes every event
//! that could come after the miss.

use std::{fs::File, io::BufWriter};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};

use crate::{
    event::Event,
    model::{Model, Verdict},
    observe::Observer,
    trace::TraceWriter,
};

pub struct Pipeline {
    pub model: Model,
    writer: Option<TraceWriter<BufWriter<File>>>,
    /// The previous drain, applied at the next pump.
    held: Vec<Event>,
    /// Recursion misses already marked in the stream.
    missed_marked: u64,
    found: Vec<Verdict>,
    pub verdicts: u64,
    pub events: u64,
    pub decode_errors: u64,
    /// Stack ids whose frames are already in the stream.
    stacks_sent: std::collections::HashSet<u32>,
    /// Where verdicts go as they are found.
    pub observer: Box<dyn Observer>,
    /// Most records one drain found since this was last taken (ring buffer fill).
    pub peak_drain: usize,
    /// Lock-order edges already handed to the observer, and the new ones of this event.
    edges_known: usize,
    new_edges: Vec<crate::export::order::OrderEdge>,
}

/// Symbolized frames of a kernel stack id (innermost first).
pub type Symbolize<'a> = &'a dyn Fn(u32) -> Vec<String>;

impl Pipeline {
    pub fn new(writer: Option<TraceWriter<BufWriter<File>>>, observer: Box<dyn Observer>) -> Self {
        Pipeline {
            model: Model::new(),
            writer,
            held: Vec::new(),
            missed_marked: 0,
            found: Vec::new(),
            verdicts: 0,
            events: 0,
            decode_errors: 0,
            stacks_sent: Default::default(),
            observer,
            peak_drain: 0,
            edges_known: 0,
            new_edges: Vec::new(),
        }
    }

    /// One step: `missed_now` must have been read before this call drains the ring.
    pub fn pump(&mut self, ring: &mut RingBuf<MapData>, missed_now: u64, symbolize: Symbolize) -> Result<()> {
        let mut fresh = Vec::new();
        while let Some(item) = ring.next() {
            match Event::decode(&item) {
                Ok(ev) => {
                    // Symbolized now, while the stack map still holds it: a replay has only
                    // the trace. Each stack's frames go in once, before its first event.
                    if let Some(id) = ev.stack
                        && self.stacks_sent.insert(id)
                    {
                        fresh.push(Event::stack_frames(id, symbolize(id), &ev));
                    }
                    fresh.push(ev)
                }
                Err(e) => {
                    self.decode_errors += 1;
                    log::error!("{e}");
                }
            }
        }
        self.peak_drain = self.peak_drain.max(fresh.len());
        log::debug!(
            "pump: missed {missed_now} (marked {}), drained {} events ts {:?}..{:?}, applying {} held",
            self.missed_marked,
            fresh.len(),
            fresh.first().map(|e| e.ts_ns),
            fresh.last().map(|e| e.ts_ns),
            self.held.len()
        );
        let batch = std::mem::replace(&mut self.held, fresh);
        // The new misses happened after the previous read, so somewhere in `batch` (drained
        // since) or in the fresh drain now held: the marker covers both.
        let marker = (missed_now > self.missed_marked).then(|| {
            let span = (batch.len() + self.held.len()) as u64;
            let m = Event::missed(missed_now - self.missed_marked, span, batch.first());
            self.missed_marked = missed_now;
            m
        });
        for ev in marker.iter().chain(batch.iter()) {
            self.apply(ev)?;
        }
        // One flush per pump: a SIGKILL loses at most the line being written.
        if let Some(w) = self.writer.as_mut() {
            w.flush().context("flushing the trace file")?;
        }
        Ok(())
    }

    fn apply(&mut self, ev: &Event) -> Result<()> {
        if !matches!(ev.what, crate::event::What::Missed { .. } | crate::event::What::Stack { .. }) {
            self.events += 1;
        }
        self.model.apply(ev, &mut self.found);
        if let Some(w) = self.writer.as_mut() {
            w.event(ev).context("writing the trace file")?;
        }
        self.observer.event(ev);
        crate::export::order::new_edges(&self.model, &mut self.edges_known, &mut self.new_edges);
        if !self.new_edges.is_empty() {
            self.observer.order_edges(&self.new_edges);
            self.new_edges.clear();
        }
        for v in self.found.drain(..) {
            self.verdicts += 1;
            self.observer.verdict(&v);
        }
        Ok(())
    }

    /// After the flow has stopped: applies everything left in the ring and held back, and
    /// hands over the trace writer for its footer.
    pub fn finish(&mut self, ring: &mut RingBuf<MapData>, missed_now: u64, symbolize: Symbolize) -> Result<Option<TraceWriter<BufWriter<File>>>> {
        self.pump(ring, missed_now, symbolize)?;
        self.pump(ring, missed_now, symbolize)?;
        Ok(self.writer.take())
    }
}
