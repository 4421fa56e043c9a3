//! Streams a trace out, record by record, in either form.

use std::io::{self, BufWriter, Write};

use super::binary;
use super::format::{Footer, Header, LineRef, TraceFormat};
use crate::event::Event;

/// Writes one trace. Holds nothing but its buffers, so recordings of any length run in
/// constant memory.
pub struct TraceWriter<W: Write> {
    out: BufWriter<W>,
    format: TraceFormat,
    /// A binary record's body, reused from record to record.
    body: Vec<u8>,
    events: u64,
}

impl<W: Write> TraceWriter<W> {
    /// Starts a JSON Lines trace on `w` by writing the header line.
    pub fn new(w: W, header: &Header) -> io::Result<Self> {
        Self::with_format(w, header, TraceFormat::Jsonl)
    }

    /// Starts a trace of `format` on `w` by writing its header.
    pub fn with_format(w: W, header: &Header, format: TraceFormat) -> io::Result<Self> {
        let mut writer = TraceWriter { out: BufWriter::new(w), format, body: Vec::new(), events: 0 };
        match format {
            TraceFormat::Jsonl => writer.line(&LineRef::Header(header))?,
            TraceFormat::Binary => {
                writer.out.write_all(binary::MAGIC)?;
                writer.out.write_all(&binary::VERSION.to_le_bytes())?;
                // The same object as a JSON Lines header line, so one check reads both.
                let json = serde_json::to_vec(&LineRef::Header(header))?;
                writer.out.write_all(&len32(json.len())?.to_le_bytes())?;
                writer.out.write_all(&json)?;
            }
        }
        Ok(writer)
    }

    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        match self.format {
            TraceFormat::Jsonl => self.line(&LineRef::Event(ev))?,
            TraceFormat::Binary => {
                self.body.clear();
                binary::encode_event(ev, &mut self.body);
                self.record(binary::tag::EVENT)?;
            }
        }
        self.events += 1;
        Ok(())
    }

    /// Pushes buffered records to `w`. Call after each ring-buffer drain: a killed recorder
    /// then loses at most a partial last record, which the reader tolerates.
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
        match self.format {
            TraceFormat::Jsonl => self.line(&LineRef::Footer(&footer))?,
            TraceFormat::Binary => {
                self.body = serde_json::to_vec(&footer)?;
                self.record(binary::tag::FOOTER)?;
            }
        }
        self.out.into_inner().map_err(io::IntoInnerError::into_error)
    }

    fn line(&mut self, line: &LineRef<'_>) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }

    /// Writes `body` as one binary record: length, tag, body.
    fn record(&mut self, tag: u8) -> io::Result<()> {
        self.out.write_all(&len32(self.body.len() + 1)?.to_le_bytes())?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&self.body)
    }
}

fn len32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("a trace record of {n} bytes is too long")))
}
