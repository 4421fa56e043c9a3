//! `vmalock check FILE`: replays a trace through the same model a live run uses, so it finds
//! the same verdicts; usable as a CI gate (non-zero exit when there are violations).

use std::io::BufRead;

use crate::{
    model::{Graph, Model, Stats, Verdict},
    trace::{Footer, Header, TraceError, TraceReader},
};

pub struct Replay {
    pub header: Header,
    pub footer: Option<Footer>,
    pub warnings: Vec<String>,
    pub verdicts: u64,
    pub events: u64,
    pub stats: Stats,
    /// The lock-order graph the trace built.
    pub graph: Graph,
}

/// Streams `input` through the model, handing each verdict to `on_verdict` as it is found
/// (none are kept, so memory stays bounded however long the trace).
pub fn replay<R: BufRead>(input: R, mut on_verdict: impl FnMut(&Verdict)) -> Result<Replay, TraceError> {
    let (header, mut reader) = TraceReader::open(input)?;
    let mut model = Model::new();
    let mut found: Vec<Verdict> = Vec::new();
    let mut verdicts = 0;
    let mut events = 0;
    for ev in reader.by_ref() {
        let ev = ev?;
        events += 1;
        model.apply(&ev, &mut found);
        for v in found.drain(..) {
            verdicts += 1;
            on_verdict(&v);
        }
    }
    Ok(Replay {
        header,
        footer: reader.footer().cloned(),
        warnings: reader.warnings().to_vec(),
        verdicts,
        events,
        stats: model.stats().clone(),
        graph: model.lock_graph(),
    })
}
