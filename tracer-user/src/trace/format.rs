//! The lines of a trace file: one header, events, one footer, each a JSON object with a
//! `type` field.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// `format` of every vmalock trace header.
pub const FORMAT: &str = "vmalock-trace";
/// The newest format version this build reads and the one it writes. Bump it when a reader of
/// the old version would misread the new lines; adding fields does not need a bump.
pub const VERSION: u32 = 1;
/// The clock of every `ts_ns` in the file.
pub const CLOCK: &str = "CLOCK_MONOTONIC";

/// How a trace file is written. Readers tell the two apart by the first bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// JSON Lines: readable with jq and a text editor.
    #[default]
    Jsonl,
    /// Length-prefixed binary records: about half the size and several times faster to
    /// check; `vmalock export -f jsonl` turns it into JSON Lines.
    Binary,
}

/// First line: how, where and when the recording was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`]; tells a vmalock trace from other JSON Lines files.
    pub format: String,
    pub version: u32,
    pub tool_version: String,
    pub kernel_release: String,
    pub clock: String,
    /// CLOCK_MONOTONIC and wall clock at the start, to turn event timestamps into dates.
    pub monotonic_start_ns: u64,
    pub unix_start_ns: u64,
    /// The vmalock argv that made the recording.
    pub command: Vec<String>,
    pub filter: Filter,
    /// Whether every event was recorded, or only those the model needed.
    pub all_events: bool,
    /// Whether balanced mmap_lock pairs (an acquire and its release with nothing sent between)
    /// were folded in the kernel and are absent from the trace, and with them the VMA events
    /// whose facts at the hook showed them legal and the lock-order rwsem pairs along a chain
    /// sent within the second. Older traces lack the field.
    #[serde(default)]
    pub folded_pairs: bool,
    /// Owned by the probe code; kept opaque here so its shape can change without this module.
    pub capabilities: serde_json::Value,
    pub layout: serde_json::Value,
}

impl Default for Header {
    /// A header of the current format with every recording-specific field empty: fill those in
    /// with struct update syntax.
    fn default() -> Self {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            tool_version: String::new(),
            kernel_release: String::new(),
            clock: CLOCK.into(),
            monotonic_start_ns: 0,
            unix_start_ns: 0,
            command: Vec::new(),
            filter: Filter::default(),
            all_events: false,
            folded_pairs: false,
            capabilities: serde_json::Value::Null,
            layout: serde_json::Value::Null,
        }
    }
}

/// Which tasks were recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only this process, or every task if `None`.
    pub tgid: Option<u32>,
    /// Only tasks of this comm (`--comm`); absent when every name was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

/// Last line, written when a recording ends cleanly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    pub events: u64,
    pub lost_events: u64,
    pub lost_per_cpu: Vec<u64>,
    pub duration_ns: u64,
    pub stop_reason: String,
}

/// Any line of a trace file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header(Header),
    Event(Event),
    Footer(Footer),
}

/// [`Line`] by reference, so writing needs no copies. Must serialize exactly like `Line`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum LineRef<'a> {
    Header(&'a Header),
    /// The writer writes event lines by hand (`TraceWriter::event_line`); this is the reference
    /// its tests hold it to.
    #[cfg(test)]
    Event(&'a Event),
    Footer(&'a Footer),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::What;

    #[test]
    fn event_line_carries_both_type_and_kind_tags() {
        let ev = Event {
            ts_ns: 7,
            cpu: 1,
            tid: 3,
            tgid: 2,
            comm: "sh".into(),
            task_new: true,
            ts_coarse: false,
            lost_before: 0,
            loss_epoch: 0,
            stack: None,
            what: What::MmapLockReleased {
                mm: 0xffff_8880_0000_1000,
                write: true,
            },
        };
        let json = serde_json::to_string(&LineRef::Event(&ev)).unwrap();
        assert!(json.starts_with(r#"{"type":"event","ts_ns":7,"#), "{json}");
        assert!(
            json.contains(r#""kind":"mmap_lock_released","mm":"0xffff888000001000","write":true"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Line>(&json).unwrap(),
            Line::Event(ev)
        );
    }

    #[test]
    fn header_line_starts_with_its_type() {
        let json = serde_json::to_string(&LineRef::Header(&Header::default())).unwrap();
        assert!(
            json.starts_with(r#"{"type":"header","format":"vmalock-trace","version":1,"#),
            "{json}"
        );
        assert!(json.contains(r#""clock":"CLOCK_MONOTONIC""#), "{json}");
        assert!(json.contains(r#""filter":{"tgid":null}"#), "{json}");
    }
}
