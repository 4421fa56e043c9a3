//! Trace files: versioned recordings of decoded events, for `vmalock check` to replay through
//! the same model as the live run.
//!
//! A header, one record per event, a footer: as JSON Lines by default, or as binary records
//! (`binary`) for long recordings; the reader takes either. I/O goes only through the `Write` and
//! `BufRead` the caller hands in, so files, pipes and tests are all alike.

mod binary;
mod fastline;
mod format;
mod reader;
mod writer;

pub use format::{CLOCK, FORMAT, Filter, Footer, Header, Line, TraceFormat, VERSION};
pub use reader::{TraceError, TraceErrorKind, TraceReader};
pub use writer::TraceWriter;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, What};

    fn header() -> Header {
        Header {
            tool_version: "0.1.0".into(),
            kernel_release: "6.12.0-test".into(),
            monotonic_start_ns: 1_000,
            unix_start_ns: 1_700_000_000_000_000_000,
            command: vec![
                "vmalock".into(),
                "record".into(),
                "-o".into(),
                "t.jsonl".into(),
            ],
            filter: Filter { tgid: Some(42), comm: Some("worker".into()) },
            all_events: true,
            capabilities: serde_json::json!({"tracepoint:mmap_lock": true}),
            layout: serde_json::json!({"mm_struct": {"size": 1024}}),
            ..Header::default()
        }
    }

    fn events() -> Vec<Event> {
        let ev = |ts_ns, task_new, lost_before, what| Event {
            ts_ns,
            cpu: 3,
            tid: 43,
            tgid: 42,
            comm: "a \"quoted\" comm".into(),
            task_new,
            ts_coarse: false,
            lost_before,
            loss_epoch: lost_before,
            stack: None,
            what,
        };
        let mm = 0xffff_8880_1234_5000;
        vec![
            ev(2_000, false, 0, What::MmapLockStart { mm, write: true, vma_read: None }),
            ev(
                3_000,
                true,
                0,
                What::MmapLockAcquired {
                    mm,
                    write: true,
                    success: true, vma_read: None, trylock: false },
            ),
            ev(4_000, false, 7, What::MmapLockReleased { mm, write: true }),
            ev(5_000, false, 0, What::TaskExit),
        ]
    }

    fn footer() -> Footer {
        Footer {
            events: 4,
            lost_events: 7,
            lost_per_cpu: vec![0, 0, 0, 7],
            duration_ns: 9_000,
            stop_reason: "SIGINT".into(),
        }
    }

    fn recording() -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new(), &header()).unwrap();
        for ev in events() {
            w.event(&ev).unwrap();
        }
        assert_eq!(w.events_written(), 4);
        w.finish(footer()).unwrap()
    }

    /// Everything a reader gives back for `bytes`.
    struct ReadBack {
        header: Header,
        items: Vec<Result<Event, TraceError>>,
        footer: Option<Footer>,
        warnings: Vec<String>,
    }

    fn read_all(bytes: &[u8]) -> ReadBack {
        let (header, mut r) = TraceReader::open(bytes).unwrap();
        let items = r.by_ref().collect();
        ReadBack {
            header,
            items,
            footer: r.footer().cloned(),
            warnings: r.warnings().to_vec(),
        }
    }

    fn open_err(bytes: &[u8]) -> TraceError {
        match TraceReader::open(bytes) {
            Ok(_) => panic!("opened {:?}", String::from_utf8_lossy(bytes)),
            Err(e) => e,
        }
    }

    #[test]
    fn round_trip_keeps_header_events_and_footer() {
        let bytes = recording();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 6);
        let ReadBack {
            header: h,
            items,
            footer: f,
            warnings,
        } = read_all(&bytes);
        assert_eq!(h, header());
        assert_eq!(
            items.into_iter().collect::<Result<Vec<_>, _>>().unwrap(),
            events()
        );
        assert_eq!(f, Some(footer()));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn flush_pushes_lines_through() {
        let mut out = Vec::new();
        let mut w = TraceWriter::new(&mut out, &header()).unwrap();
        w.event(&events()[0]).unwrap();
        w.flush().unwrap();
        drop(w);
        let ReadBack {
            items,
            footer: f,
            warnings,
            ..
        } = read_all(&out);
        assert_eq!(items.len(), 1);
        assert_eq!(f, None);
        assert_eq!(
            warnings,
            ["no footer: the recording did not finish cleanly; lost-event counts unknown"]
        );
    }

    #[test]
    fn truncated_last_line_is_a_warning_after_all_earlier_events() {
        let bytes = recording();
        // Cut the recording in the middle of the third event line (line 4).
        let line4 = bytes
            .split(|&b| b == b'\n')
            .take(3)
            .map(|l| l.len() + 1)
            .sum::<usize>();
        let cut = &bytes[..line4 + 20];
        let ReadBack {
            items,
            footer: f,
            warnings,
            ..
        } = read_all(cut);
        assert_eq!(
            items.into_iter().collect::<Result<Vec<_>, _>>().unwrap(),
            events()[..2]
        );
        assert_eq!(f, None);
        assert_eq!(
            warnings,
            [
                "line 4: truncated last line (the recording was cut short); ignored",
                "no footer: the recording did not finish cleanly; lost-event counts unknown",
            ]
        );
    }

    #[test]
    fn garbled_middle_line_is_an_error_naming_it() {
        let text = String::from_utf8(recording()).unwrap();
        let mut lines: Vec<_> = text.lines().map(String::from).collect();
        lines[3] = lines[3].replace("\"ts_ns\":", "\"ts_ns\"");
        let bytes = (lines.join("\n") + "\n").into_bytes();
        let items = read_all(&bytes).items;
        assert_eq!(items.len(), 3, "two events, then the error, then nothing");
        let err = items.into_iter().nth(2).unwrap().unwrap_err();
        assert_eq!(err.line, 4);
        assert!(matches!(err.kind, TraceErrorKind::Malformed(_)));
        assert!(
            err.to_string()
                .starts_with("line 4: malformed line: expected `:`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_type_and_lines_after_footer_are_errors() {
        let mut bytes = recording();
        bytes.extend_from_slice(b"{\"type\":\"event\"}\n");
        let ReadBack {
            items, footer: f, ..
        } = read_all(&bytes);
        assert_eq!(f, Some(footer()));
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().to_string(),
            "line 7: line after the footer"
        );

        let text = String::from_utf8(recording()).unwrap().replacen(
            "\"type\":\"event\"",
            "\"type\":\"marker\"",
            1,
        );
        let items = read_all(text.as_bytes()).items;
        assert_eq!(
            items[0].as_ref().unwrap_err().to_string(),
            "line 2: unknown line type \"marker\""
        );
    }

    #[test]
    fn not_a_vmalock_header_is_a_clear_error() {
        let err = open_err(b"{\"type\":\"header\",\"format\":\"perf-script\",\"version\":1}\n");
        assert_eq!(err.line, 1);
        assert!(matches!(err.kind, TraceErrorKind::NotVmalockTrace(_)));
        assert_eq!(
            err.to_string(),
            "line 1: not a vmalock trace: expected a \"vmalock-trace\" header, found format \"perf-script\""
        );
        assert!(matches!(
            open_err(b"[1, 2, 3]\n").kind,
            TraceErrorKind::NotVmalockTrace(_)
        ));
        assert!(matches!(
            open_err(b"not json\n").kind,
            TraceErrorKind::Malformed(_)
        ));
    }

    #[test]
    fn event_before_header_is_an_error() {
        let text = String::from_utf8(recording()).unwrap();
        let without_header = text.split_once('\n').unwrap().1;
        let err = open_err(without_header.as_bytes());
        assert_eq!(err.to_string(), "line 1: event line before the header");
    }

    #[test]
    fn newer_version_is_a_clear_error() {
        let future = Header {
            version: VERSION + 1,
            ..header()
        };
        let bytes = TraceWriter::new(Vec::new(), &future)
            .unwrap()
            .finish(footer())
            .unwrap();
        let err = open_err(&bytes);
        assert!(matches!(err.kind, TraceErrorKind::TooNew { found } if found == VERSION + 1));
        let msg = err.to_string();
        assert!(
            msg.contains("version 2 is newer")
                && msg.contains("(version 1)")
                && msg.contains("upgrade vmalock"),
            "{msg}"
        );
    }

    #[test]
    fn empty_input_is_an_error() {
        let err = open_err(b"");
        assert!(matches!(err.kind, TraceErrorKind::Empty));
        assert_eq!(err.to_string(), "line 1: empty file: no header line");
    }
}
