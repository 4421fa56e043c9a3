//! `vmalock export`: a recorded trace into the formats other tools open (a sink: it reads the
//! trace and the model's verdicts, and writes; the model does not know about it).
//!
//! - `jsonl`: the vmalock trace itself with pointers scrubbed: for jq, and still replayable by
//!   `vmalock check` (same verdicts, since the model only compares addresses for equality).
//! - `chrome`: Chrome Trace Event JSON for ui.perfetto.dev and chrome://tracing.
//! - `perfetto`: the same events as Perfetto's protobuf trace (TrackEvent packets).

mod chrome;
mod perfetto;
pub mod order;
pub mod pointers;

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result};

pub use chrome::ChromeWriter;
use order::{ModelEdges, OrderEdges};
use pointers::Pseudonyms;

use crate::{
    model::Model,
    trace::{TraceReader, TraceWriter},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The vmalock trace (JSON Lines), pointers scrubbed; `vmalock check` replays it.
    Jsonl,
    /// Chrome Trace Event JSON: open it in ui.perfetto.dev or chrome://tracing.
    Chrome,
    /// Perfetto protobuf (TrackEvent packets): open it in ui.perfetto.dev or trace_processor.
    Perfetto,
}

impl Format {
    /// The usual file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Chrome => "json",
            Format::Perfetto => "perfetto-trace",
        }
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Exported {
    pub events: u64,
    pub violations: u64,
    pub warnings: Vec<String>,
}

/// Exports the trace read from `input` to `out`; `raw_pointers` keeps kernel addresses.
pub fn export<R: BufRead, W: Write>(input: R, out: W, format: Format, raw_pointers: bool) -> Result<Exported> {
    export_with(input, out, format, raw_pointers, &mut ModelEdges::default())
}

/// [`export`] with the lock-order edges taken from `edges`.
pub fn export_with<R: BufRead, W: Write>(input: R, out: W, format: Format, raw_pointers: bool, edges: &mut dyn OrderEdges) -> Result<Exported> {
    let (header, mut reader) = TraceReader::open(input)?;
    let mut ptrs = Pseudonyms::new(raw_pointers);
    let mut done = Exported::default();
    match format {
        Format::Jsonl => {
            let header = scrub(&mut ptrs, &header)?;
            let mut w = TraceWriter::new(out, &header)?;
            for ev in reader.by_ref() {
                w.event(&scrub(&mut ptrs, &ev?)?)?;
                done.events += 1;
            }
            let mut footer = reader.footer().cloned().unwrap_or_default();
            if reader.footer().is_none() {
                // Keep "the recording did not finish" visible to whoever reads the export.
                footer.stop_reason = "the recording did not finish cleanly (no footer)".into();
            }
            footer.events = done.events;
            w.finish(footer)?.flush()?;
        }
        Format::Chrome | Format::Perfetto => {
            let mut w = if format == Format::Chrome {
                ChromeWriter::new(out, &header, ptrs)?
            } else {
                ChromeWriter::perfetto(out, &header, ptrs)?
            };
            let mut model = Model::new();
            let (mut verdicts, mut flows) = (Vec::new(), Vec::new());
            for ev in reader.by_ref() {
                let ev = ev?;
                done.events += 1;
                w.event(&ev)?;
                edges.observe(&ev, &mut flows);
                for e in flows.drain(..) {
                    w.edge(&e)?;
                }
                model.apply(&ev, &mut verdicts);
                for v in verdicts.drain(..) {
                    done.violations += 1;
                    w.violation(&v)?;
                }
            }
            w.finish(&header, reader.footer())?;
        }
    }
    done.warnings = reader.warnings().to_vec();
    Ok(done)
}

/// A header or event with its pointers replaced (a round trip through JSON, where the pointer
/// fields are named).
fn scrub<T: serde::Serialize + serde::de::DeserializeOwned>(ptrs: &mut Pseudonyms, x: &T) -> Result<T> {
    let mut v = serde_json::to_value(x)?;
    ptrs.scrub_json(&mut v);
    // Through text: the trace's own deserializers borrow their strings.
    serde_json::from_str(&v.to_string()).context("scrubbed line no longer parses (a bug in the scrubber)")
}

#[cfg(test)]
mod tests;

