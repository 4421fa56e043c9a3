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
    /// A binary record's body, or a JSON line's kind-specific part, reused from record to record.
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
            TraceFormat::Jsonl => self.event_line(ev)?,
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

    /// The bytes serde writes for `LineRef::Event(ev)` (`event_lines_are_what_serde_writes`):
    /// the common fields by hand, then `What` by serde on its own, whose object's fields
    /// continue the line's (serde writes the flattened enum the same way). Through serde's
    /// flatten path the whole line cost the daemon a third more CPU per event under `record`.
    fn event_line(&mut self, ev: &Event) -> io::Result<()> {
        let o = &mut self.out;
        write!(o, "{{\"type\":\"event\",\"ts_ns\":{},\"cpu\":{},\"tid\":{},\"tgid\":{},\"comm\":", ev.ts_ns, ev.cpu, ev.tid, ev.tgid)?;
        serde_json::to_writer(&mut *o, ev.comm.as_str())?;
        if ev.task_new {
            o.write_all(b",\"task_new\":true")?;
        }
        if ev.ts_coarse {
            o.write_all(b",\"ts_coarse\":true")?;
        }
        if ev.lost_before != 0 {
            write!(o, ",\"lost_before\":{}", ev.lost_before)?;
        }
        if ev.loss_epoch != 0 {
            write!(o, ",\"loss_epoch\":{}", ev.loss_epoch)?;
        }
        if let Some(id) = ev.stack {
            write!(o, ",\"stack\":{id}")?;
        }
        self.body.clear();
        serde_json::to_writer(&mut self.body, &ev.what)?;
        // `{"kind":…}`: its opening brace becomes our comma, its closing brace ends the line.
        o.write_all(b",")?;
        o.write_all(self.body.get(1..).unwrap_or_default())?;
        o.write_all(b"\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_what_serde_writes() {
        let events = crate::trace::binary::tests::every_kind();
        let mut odd = events[0].clone();
        odd.comm = "a\"b\\c\u{1}".into();
        odd.lost_before = 7;
        odd.loss_epoch = 9;
        odd.stack = Some(0);
        for ev in events.iter().chain([&odd]) {
            let mut w = TraceWriter { out: BufWriter::new(Vec::new()), format: TraceFormat::Jsonl, body: Vec::new(), events: 0 };
            w.event(ev).unwrap();
            let fast = String::from_utf8(w.out.into_inner().unwrap()).unwrap();
            let serde = serde_json::to_string(&LineRef::Event(ev)).unwrap() + "\n";
            assert_eq!(fast, serde);
        }
    }
}
