//! Streams a trace in line by line, in bounded memory.
//!
//! A recording killed mid-write leaves a partial last line and no footer; both are expected
//! and become warnings. Anything else wrong is an error naming its line: silently skipping a
//! corrupt line could hide exactly the event that proves a violation.

use std::fmt;
use std::io::{self, BufRead, Read};

use super::binary;
use super::format::{FORMAT, Footer, Header, Line, VERSION};
use crate::event::Event;

/// Longest line accepted. Event lines are a few hundred bytes and headers a few kilobytes; the
/// limit only stops a corrupt file without newlines from eating all memory.
const MAX_LINE: usize = 16 << 20;

/// What is wrong with a trace, and on which line.
#[derive(Debug)]
pub struct TraceError {
    /// 1-based: the line of a JSON Lines trace, the record of a binary one (its header is 1).
    pub line: usize,
    /// Whether the trace is binary, so messages say "record" instead of "line".
    pub binary: bool,
    pub kind: TraceErrorKind,
}

#[derive(Debug)]
pub enum TraceErrorKind {
    Io(io::Error),
    Empty,
    TooLong,
    /// Not JSON, or not the shape its `type` promises; serde's message.
    Malformed(String),
    /// The first line is not a vmalock trace header; says what it is instead.
    NotVmalockTrace(String),
    TooNew {
        found: u32,
    },
    /// An event or footer line where the header should be.
    BeforeHeader(String),
    SecondHeader,
    AfterFooter,
    UnknownType(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.binary { "record" } else { "line" };
        write!(f, "{unit} {}: ", self.line)?;
        match &self.kind {
            TraceErrorKind::Io(e) => write!(f, "cannot read: {e}"),
            TraceErrorKind::Empty => write!(f, "empty file: no header line"),
            TraceErrorKind::TooLong => write!(
                f,
                "{unit} longer than {MAX_LINE} bytes: not a vmalock trace or corrupt"
            ),
            TraceErrorKind::Malformed(msg) => write!(f, "malformed {unit}: {msg}"),
            TraceErrorKind::NotVmalockTrace(found) => {
                write!(
                    f,
                    "not a vmalock trace: expected a {FORMAT:?} header, found {found}"
                )
            }
            TraceErrorKind::TooNew { found } => {
                let (what, newest) =
                    if self.binary { ("binary trace container", binary::VERSION) } else { ("trace format", VERSION) };
                write!(
                    f,
                    "{what} version {found} is newer than the newest this vmalock reads \
                     (version {newest}); upgrade vmalock to read it"
                )
            }
            TraceErrorKind::BeforeHeader(kind) => write!(f, "{kind} line before the header"),
            TraceErrorKind::SecondHeader => write!(f, "a second header line"),
            TraceErrorKind::AfterFooter => write!(f, "{unit} after the footer"),
            TraceErrorKind::UnknownType(t) => write!(f, "unknown {unit} type {t}"),
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            TraceErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads one trace: the header on [`open`](Self::open), then events by iterating.
pub struct TraceReader<R: BufRead> {
    input: R,
    /// The current line's bytes, reused from line to line.
    buf: Vec<u8>,
    /// 1-based number of the line (record) in `buf`.
    line: usize,
    /// A binary trace (`binary`), not JSON Lines.
    binary: bool,
    footer: Option<Footer>,
    warnings: Vec<String>,
    /// Iteration ended: end of input, or an error was returned.
    done: bool,
}

/// One line read from the input.
enum Read1 {
    Eof,
    /// A line and whether it ended with a newline (only a cut-short last line does not).
    Line {
        complete: bool,
    },
}

impl<R: BufRead> TraceReader<R> {
    /// Reads and checks the header line.
    pub fn open(input: R) -> Result<(Header, Self), TraceError> {
        let mut reader = TraceReader {
            input,
            buf: Vec::new(),
            line: 0,
            binary: false,
            footer: None,
            warnings: Vec::new(),
            done: false,
        };
        let first = reader.input.fill_buf().map_err(|e| TraceError { line: 1, binary: false, kind: TraceErrorKind::Io(e) })?;
        if first.first() == Some(&binary::MAGIC[0]) {
            reader.binary = true;
            let header = reader.binary_header()?;
            return Ok((header, reader));
        }
        if let Read1::Eof = reader.read_line()? {
            return Err(TraceError {
                line: 1,
                binary: false,
                kind: TraceErrorKind::Empty,
            });
        }
        let header = reader.header()?;
        Ok((header, reader))
    }

    /// The footer, once iteration has reached it.
    pub fn footer(&self) -> Option<&Footer> {
        self.footer.as_ref()
    }

    /// Problems that did not stop reading, such as a cut-short recording.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Checks the line in `buf` in an order that gives the most useful error: what kind of
    /// file this is before which version, and the version before the fields (a future version
    /// may have changed them).
    fn header(&self) -> Result<Header, TraceError> {
        let value: serde_json::Value = serde_json::from_slice(&self.buf)
            .map_err(|e| self.error(TraceErrorKind::Malformed(e.to_string())))?;
        let kind = value.get("type").and_then(|t| t.as_str());
        if let Some(kind @ ("event" | "footer")) = kind {
            return Err(self.error(TraceErrorKind::BeforeHeader(kind.into())));
        }
        match value.get("format") {
            Some(f) if f == FORMAT && kind == Some("header") => {}
            Some(f) => {
                return Err(self.error(TraceErrorKind::NotVmalockTrace(format!("format {f}"))));
            }
            None => {
                return Err(self.error(TraceErrorKind::NotVmalockTrace(
                    "a line without a \"format\" field".into(),
                )));
            }
        }
        if let Some(found) = value.get("version").and_then(|v| v.as_u64())
            && found > u64::from(VERSION)
        {
            let found = u32::try_from(found).unwrap_or(u32::MAX);
            return Err(self.error(TraceErrorKind::TooNew { found }));
        }
        serde_json::from_value(value)
            .map_err(|e| self.error(TraceErrorKind::Malformed(e.to_string())))
    }

    /// Reads the next line into `buf`, without its line ending.
    fn read_line(&mut self) -> Result<Read1, TraceError> {
        self.buf.clear();
        let limit = MAX_LINE as u64 + 1;
        let n = self
            .input
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| TraceError {
                line: self.line + 1,
                binary: false,
                kind: TraceErrorKind::Io(e),
            })?;
        if n == 0 {
            return Ok(Read1::Eof);
        }
        self.line += 1;
        let complete = self.buf.last() == Some(&b'\n');
        if complete {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(self.error(TraceErrorKind::TooLong));
        }
        Ok(Read1::Line { complete })
    }

    /// The next event, or `None` at the end; `Err` for a line that cannot be trusted.
    fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        if self.binary {
            return self.next_binary_event();
        }
        loop {
            let complete = match self.read_line()? {
                Read1::Eof => {
                    if self.footer.is_none() {
                        self.warn_no_footer();
                    }
                    return Ok(None);
                }
                Read1::Line { complete } => complete,
            };
            if self.footer.is_some() {
                return Err(self.error(TraceErrorKind::AfterFooter));
            }
            if let Some(ev) = super::fastline::event(&self.buf) {
                return Ok(Some(ev));
            }
            match serde_json::from_slice::<Line>(&self.buf) {
                Ok(Line::Event(ev)) => return Ok(Some(ev)),
                Ok(Line::Footer(footer)) => self.footer = Some(footer),
                Ok(Line::Header(_)) => return Err(self.error(TraceErrorKind::SecondHeader)),
                // Nothing can follow a line without a newline, so this is where the recording
                // was cut off.
                Err(_)
                    if !complete
                        && serde_json::from_slice::<serde_json::Value>(&self.buf).is_err() =>
                {
                    self.warnings.push(format!(
                        "line {}: truncated last line (the recording was cut short); ignored",
                        self.line
                    ));
                    self.warn_no_footer();
                    return Ok(None);
                }
                Err(e) => return Err(self.error(self.classify(e))),
            }
        }
    }

    /// Why a line did not parse as a [`Line`]: an unknown type, or serde's own words.
    fn classify(&self, e: serde_json::Error) -> TraceErrorKind {
        let value = serde_json::from_slice::<serde_json::Value>(&self.buf).ok();
        match value.as_ref().and_then(|v| v.get("type")) {
            Some(t) if !matches!(t.as_str(), Some("header" | "event" | "footer")) => {
                TraceErrorKind::UnknownType(t.to_string())
            }
            _ => TraceErrorKind::Malformed(e.to_string()),
        }
    }

    /// Reads and checks a binary trace's magic, container version and header.
    fn binary_header(&mut self) -> Result<Header, TraceError> {
        self.line = 1;
        let cut = |r: &Self| r.error(TraceErrorKind::Malformed("the binary trace's header is cut short".into()));
        if self.fill(binary::MAGIC.len() + 4)? < binary::MAGIC.len() + 4 {
            return Err(cut(self));
        }
        if self.buf[..binary::MAGIC.len()] != binary::MAGIC[..] {
            return Err(self.error(TraceErrorKind::NotVmalockTrace("a binary file of another kind".into())));
        }
        let found = u32::from_le_bytes(self.buf[binary::MAGIC.len()..].try_into().expect("4 bytes"));
        if found > binary::VERSION {
            return Err(self.error(TraceErrorKind::TooNew { found }));
        }
        let len = match self.record_len()? {
            Some(len) => len,
            None => return Err(cut(self)),
        };
        if self.fill(len)? < len {
            return Err(cut(self));
        }
        self.header()
    }

    /// The length that starts the next binary record: `None` at the end of the input, and an
    /// error for a length no writer makes.
    fn record_len(&mut self) -> Result<Option<usize>, TraceError> {
        match self.fill(4)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(self.error(TraceErrorKind::Malformed("cut short in a record's length".into()))),
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_LINE {
            return Err(self.error(TraceErrorKind::TooLong));
        }
        Ok(Some(len))
    }

    /// A binary trace's next event: records are (length, tag, body).
    fn next_binary_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            // Nearly every record is an event lying whole in the input's buffer: decode it
            // there, without copying it out first.
            if self.footer.is_none()
                && let Some((n, decoded)) = decode_buffered(&mut self.input)
            {
                self.input.consume(n);
                self.line += 1;
                return decoded.map(Some).map_err(|m| self.error(TraceErrorKind::Malformed(m)));
            }
            self.line += 1;
            let len = match self.record_len() {
                Ok(Some(len)) => len,
                Ok(None) => {
                    self.line -= 1;
                    if self.footer.is_none() {
                        self.warn_no_footer();
                    }
                    return Ok(None);
                }
                Err(TraceError { kind: TraceErrorKind::Malformed(_), .. }) => return Ok(self.cut_short()),
                Err(e) => return Err(e),
            };
            if self.fill(len)? < len {
                return Ok(self.cut_short());
            }
            if self.footer.is_some() {
                return Err(self.error(TraceErrorKind::AfterFooter));
            }
            let Some((&tag, body)) = self.buf.split_first() else {
                return Err(self.error(TraceErrorKind::Malformed("an empty record".into())));
            };
            match tag {
                binary::tag::EVENT => {
                    return binary::decode_event(body).map(Some).map_err(|m| self.error(TraceErrorKind::Malformed(m)));
                }
                binary::tag::FOOTER => {
                    let footer = serde_json::from_slice(body)
                        .map_err(|e| self.error(TraceErrorKind::Malformed(format!("footer: {e}"))))?;
                    self.footer = Some(footer);
                }
                t => return Err(self.error(TraceErrorKind::UnknownType(format!("tag {t}")))),
            }
        }
    }

    /// The input ended inside a record: the recording was cut off there.
    fn cut_short(&mut self) -> Option<Event> {
        self.warnings.push(format!(
            "record {}: truncated last record (the recording was cut short); ignored",
            self.line
        ));
        self.warn_no_footer();
        None
    }

    /// Reads up to `n` bytes into `buf` (fewer only at the end of the input); how many.
    fn fill(&mut self, n: usize) -> Result<usize, TraceError> {
        self.buf.resize(n, 0);
        let mut got = 0;
        while got < n {
            match self.input.read(&mut self.buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(TraceErrorKind::Io(e))),
            }
        }
        self.buf.truncate(got);
        Ok(got)
    }

    fn warn_no_footer(&mut self) {
        self.warnings.push(
            "no footer: the recording did not finish cleanly; lost-event counts unknown".into(),
        );
    }

    fn error(&self, kind: TraceErrorKind) -> TraceError {
        TraceError {
            line: self.line,
            binary: self.binary,
            kind,
        }
    }
}

/// The event record at the start of `input`'s buffer, if it lies there whole, and how many
/// bytes it takes; anything else (another tag, a record split across reads) is left for the
/// general path.
fn decode_buffered<R: BufRead>(input: &mut R) -> Option<(usize, Result<Event, String>)> {
    // An I/O error here comes up again, with its record number, on the general path.
    let avail = input.fill_buf().ok()?;
    let len = u32::from_le_bytes(avail.get(..4)?.try_into().expect("4 bytes")) as usize;
    match avail.get(4..4 + len) {
        Some([binary::tag::EVENT, body @ ..]) if len <= MAX_LINE => Some((4 + len, binary::decode_event(body))),
        _ => None,
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<Event, TraceError>;

    /// Events in file order. Ends after the first error: the lines after a corrupt one are
    /// no longer trustworthy.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_event().transpose();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}
