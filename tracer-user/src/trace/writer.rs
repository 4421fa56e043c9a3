//! Streams a trace out line by line.

use std::io::{self, BufWriter, Write};

use super::format::{Footer, Header, LineRef};
use crate::event::Event;

/// Writes one trace. Holds nothing but the `BufWriter` buffer, so recordings of any length
/// run in constant memory.
pub struct TraceWriter<W: Write> {
    out: BufWriter<W>,
    events: u64,
}

impl<W: Write> TraceWriter<W> {
    /// Starts a trace on `w` by writing the header line.
    pub fn new(w: W, header: &Header) -> io::Result<Self> {
        let mut writer = TraceWriter {
            out: BufWriter::new(w),
            events: 0,
        };
        writer.line(&LineRef::Header(header))?;
        Ok(writer)
    }

    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.line(&LineRef::Event(ev))?;
        self.events += 1;
        Ok(())
    }

    /// Pushes buffered lines to `w`. Call after each ring-buffer drain: a killed recorder then
    /// loses at most a partial last line, which the reader tolerates.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Events written so far.
    pub fn events_written(&self) -> u64 {
        self.events
    }

    /// Ends the trace with its footer and hands back `w`, flushed (the caller may want to
    /// fsync a file).
    pub fn finish(mut self, footer: Footer) -> io::Result<W> {
        self.line(&LineRef::Footer(&footer))?;
        self.out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
    }

    fn line(&mut self, line: &LineRef<'_>) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }
}
