//! Perfetto's own protobuf trace format (TracePacket / TrackDescriptor / TrackEvent), for
//! ui.perfetto.dev and trace_processor. It carries exactly what the Chrome JSON export carries:
//! [`super::ChromeWriter`] builds its events once and this turns each one into packets, so the
//! two cannot drift apart.
//!
//! Field numbers are those of perfetto's protos/perfetto/trace/{trace,trace_packet}.proto and
//! track_event/{track_event,track_descriptor,process_descriptor,thread_descriptor,
//! debug_annotation}.proto. Nothing is interned, so every packet stands on its own.

use std::{
    collections::HashSet,
    io::{self, Write},
};

use serde_json::Value;

/// Field numbers used here.
pub(crate) mod field {
    pub const TRACE_PACKET: u32 = 1;
    pub const PACKET_TIMESTAMP: u32 = 8;
    pub const PACKET_SEQUENCE_ID: u32 = 10;
    pub const PACKET_TRACK_EVENT: u32 = 11;
    pub const PACKET_TRACK_DESCRIPTOR: u32 = 60;
    pub const TRACK_UUID: u32 = 1;
    pub const TRACK_NAME: u32 = 2;
    pub const TRACK_PROCESS: u32 = 3;
    pub const TRACK_THREAD: u32 = 4;
    pub const PROCESS_PID: u32 = 1;
    pub const PROCESS_NAME: u32 = 6;
    pub const THREAD_PID: u32 = 1;
    pub const THREAD_TID: u32 = 2;
    pub const THREAD_NAME: u32 = 5;
    pub const EVENT_DEBUG_ANNOTATIONS: u32 = 4;
    pub const EVENT_TYPE: u32 = 9;
    pub const EVENT_TRACK_UUID: u32 = 11;
    pub const EVENT_CATEGORIES: u32 = 22;
    pub const EVENT_NAME: u32 = 23;
    pub const EVENT_FLOW_IDS: u32 = 47;
    pub const EVENT_TERMINATING_FLOW_IDS: u32 = 48;
    pub const ANNOTATION_BOOL: u32 = 2;
    pub const ANNOTATION_UINT: u32 = 3;
    pub const ANNOTATION_INT: u32 = 4;
    pub const ANNOTATION_DOUBLE: u32 = 5;
    pub const ANNOTATION_STRING: u32 = 6;
    pub const ANNOTATION_JSON: u32 = 9;
    pub const ANNOTATION_NAME: u32 = 10;
}

/// TrackEvent.Type.
pub(crate) mod event_type {
    pub const SLICE_BEGIN: u64 = 1;
    pub const SLICE_END: u64 = 2;
    pub const INSTANT: u64 = 3;
}

/// One trusted sequence for the whole trace.
const SEQUENCE: u64 = 1;
/// The track of trace-wide instants (lost events): uuid 1, named "vmalock".
const GLOBAL_TRACK: u64 = 1;

fn process_uuid(pid: u64) -> u64 {
    (1 << 40) | pid
}
fn thread_uuid(tid: u64) -> u64 {
    (2 << 40) | tid
}

/// A protobuf message being built.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }
    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn double(&mut self, field: u32, v: f64) {
        self.fixed64(field, v.to_bits());
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn msg(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
}

pub struct ProtoSink<W: Write> {
    out: W,
    described: HashSet<u64>,
    base_ns: u64,
}

impl<W: Write> ProtoSink<W> {
    pub fn new(out: W, base_ns: u64) -> Self {
        ProtoSink { out, described: HashSet::new(), base_ns }
    }

    fn packet(&mut self, p: Msg) -> io::Result<()> {
        let mut t = Msg::default();
        t.msg(field::TRACE_PACKET, p);
        self.out.write_all(&t.0)
    }

    fn describe(&mut self, uuid: u64, track: Msg) -> io::Result<()> {
        if !self.described.insert(uuid) {
            return Ok(());
        }
        let mut p = Msg::default();
        p.msg(field::PACKET_TRACK_DESCRIPTOR, track);
        self.packet(p)
    }

    fn describe_thread(&mut self, pid: u64, tid: u64, name: Option<&str>) -> io::Result<u64> {
        let uuid = thread_uuid(tid);
        let mut th = Msg::default();
        th.int(field::THREAD_PID, pid as i64);
        th.int(field::THREAD_TID, tid as i64);
        if let Some(n) = name {
            th.string(field::THREAD_NAME, n);
        }
        let mut d = Msg::default();
        d.uint(field::TRACK_UUID, uuid);
        d.msg(field::TRACK_THREAD, th);
        self.describe(uuid, d)?;
        Ok(uuid)
    }

    fn global_track(&mut self) -> io::Result<u64> {
        let mut d = Msg::default();
        d.uint(field::TRACK_UUID, GLOBAL_TRACK);
        d.string(field::TRACK_NAME, "vmalock");
        self.describe(GLOBAL_TRACK, d)?;
        Ok(GLOBAL_TRACK)
    }

    /// One Chrome Trace Event (as [`super::ChromeWriter`] builds it) as packets.
    pub fn event(&mut self, v: &Value) -> io::Result<()> {
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (pid, tid) = (n("pid"), n("tid"));
        let name = s("name").unwrap_or("");
        let ph = s("ph").unwrap_or("");
        if ph == "M" {
            let label = v.pointer("/args/name").and_then(Value::as_str);
            if name == "process_name" {
                let mut pr = Msg::default();
                pr.int(field::PROCESS_PID, pid as i64);
                if let Some(l) = label {
                    pr.string(field::PROCESS_NAME, l);
                }
                let mut d = Msg::default();
                d.uint(field::TRACK_UUID, process_uuid(pid));
                d.msg(field::TRACK_PROCESS, pr);
                self.describe(process_uuid(pid), d)?;
            } else if name == "thread_name" {
                self.describe_thread(pid, tid, label)?;
            }
            return Ok(());
        }
        let (kind, track) = match ph {
            "B" => (event_type::SLICE_BEGIN, self.describe_thread(pid, tid, None)?),
            "E" => (event_type::SLICE_END, self.describe_thread(pid, tid, None)?),
            "i" if s("s") == Some("g") => (event_type::INSTANT, self.global_track()?),
            "i" | "s" | "f" => (event_type::INSTANT, self.describe_thread(pid, tid, None)?),
            _ => return Ok(()),
        };
        let ts_us = v.get("ts").and_then(Value::as_f64).unwrap_or(0.0);
        let mut e = Msg::default();
        e.uint(field::EVENT_TYPE, kind);
        e.uint(field::EVENT_TRACK_UUID, track);
        if kind != event_type::SLICE_END {
            e.string(field::EVENT_NAME, name);
            if let Some(c) = s("cat") {
                e.string(field::EVENT_CATEGORIES, c);
            }
        }
        // Chrome flows are their own events; here a flow is an id on an instant at each end.
        match ph {
            "s" => e.fixed64(field::EVENT_FLOW_IDS, n("id")),
            "f" => e.fixed64(field::EVENT_TERMINATING_FLOW_IDS, n("id")),
            _ => {}
        }
        if let Some(args) = v.get("args").and_then(Value::as_object) {
            for (k, val) in args {
                e.msg(field::EVENT_DEBUG_ANNOTATIONS, annotation(k, val));
            }
        }
        let mut p = Msg::default();
        p.uint(field::PACKET_TIMESTAMP, self.base_ns + (ts_us * 1000.0).round() as u64);
        p.uint(field::PACKET_SEQUENCE_ID, SEQUENCE);
        p.msg(field::PACKET_TRACK_EVENT, e);
        self.packet(p)
    }

    /// The run's facts (tool, kernel, pointers, losses) on the global track at its last instant.
    pub fn finish(mut self, other: &Value, end_ns: u64) -> io::Result<W> {
        let track = self.global_track()?;
        let mut e = Msg::default();
        e.uint(field::EVENT_TYPE, event_type::INSTANT);
        e.uint(field::EVENT_TRACK_UUID, track);
        e.string(field::EVENT_NAME, "recording ended");
        if let Some(o) = other.as_object() {
            for (k, val) in o {
                e.msg(field::EVENT_DEBUG_ANNOTATIONS, annotation(k, val));
            }
        }
        let mut p = Msg::default();
        p.uint(field::PACKET_TIMESTAMP, end_ns);
        p.uint(field::PACKET_SEQUENCE_ID, SEQUENCE);
        p.msg(field::PACKET_TRACK_EVENT, e);
        self.packet(p)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn annotation(name: &str, v: &Value) -> Msg {
    let mut a = Msg::default();
    a.string(field::ANNOTATION_NAME, name);
    match v {
        Value::Bool(b) => a.uint(field::ANNOTATION_BOOL, u64::from(*b)),
        Value::Number(x) if x.is_u64() => a.uint(field::ANNOTATION_UINT, x.as_u64().unwrap_or(0)),
        Value::Number(x) if x.is_i64() => a.int(field::ANNOTATION_INT, x.as_i64().unwrap_or(0)),
        Value::Number(x) => a.double(field::ANNOTATION_DOUBLE, x.as_f64().unwrap_or(0.0)),
        Value::String(s) => a.string(field::ANNOTATION_STRING, s),
        // Nested args (stacks, proving events) keep their structure as JSON text.
        other => a.string(field::ANNOTATION_JSON, &other.to_string()),
    }
    a
}
