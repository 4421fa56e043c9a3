//! Exports of the dashboard fixture, checked against what the formats require.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/dashboard.jsonl");
/// Every kernel address in the fixture.
const RAW: &[&str] = &["ffff888012345000", "ffff888012346000", "ffff8880deadb000", "ffffffffc0123456"];

fn chrome(raw: bool) -> Value {
    let mut out = Vec::new();
    let done = export(FIXTURE.as_bytes(), &mut out, Format::Chrome, raw).unwrap();
    assert_eq!(done.violations, 4);
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", String::from_utf8_lossy(&out)))
}

/// What Perfetto and chrome://tracing need of a trace: every event placed, B/E slices balanced
/// and properly nested per thread, every flow with a start and a finish. Returns the number of
/// slices per thread.
pub(crate) fn validate_chrome(trace: &Value) -> HashMap<(u64, u64), usize> {
    let events = trace["traceEvents"].as_array().expect("traceEvents array");
    let mut stacks: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut slices: HashMap<(u64, u64), usize> = HashMap::new();
    let mut last_ts: HashMap<(u64, u64), f64> = HashMap::new();
    let mut flows: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for e in events {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("no ph: {e}"));
        let ts = e["ts"].as_f64().unwrap_or_else(|| panic!("no numeric ts: {e}"));
        let pid = e["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {e}"));
        let tid = e["tid"].as_u64().unwrap_or_else(|| panic!("no tid: {e}"));
        assert!(ts >= 0.0, "{e}");
        let track = (pid, tid);
        if ph != "M" && ph != "s" && ph != "f" {
            let last = last_ts.entry(track).or_insert(0.0);
            assert!(ts >= *last, "events of a thread go back in time: {e}");
            *last = ts;
        }
        match ph {
            "B" => {
                stacks.entry(track).or_default().push(e["name"].as_str().expect("B has a name").to_string());
                *slices.entry(track).or_default() += 1;
            }
            "E" => {
                let open = stacks.get_mut(&track).and_then(|s| s.pop()).unwrap_or_else(|| panic!("E without B: {e}"));
                assert_eq!(e["name"].as_str(), Some(open.as_str()), "E closes another slice than the innermost: {e}");
            }
            "i" => assert!(matches!(e["s"].as_str(), Some("t" | "p" | "g")), "instant scope: {e}"),
            "s" => flows.entry(e["id"].as_u64().expect("flow id")).or_default().0 += 1,
            "f" => flows.entry(e["id"].as_u64().expect("flow id")).or_default().1 += 1,
            "M" => assert!(e["args"]["name"].is_string(), "{e}"),
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    for (track, s) in &stacks {
        assert!(s.is_empty(), "slices left open on {track:?}: {s:?}");
    }
    for (id, ends) in &flows {
        assert_eq!(*ends, (1, 1), "flow {id} needs exactly one start and one finish");
    }
    slices
}

#[test]
fn chrome_export_is_valid_and_shows_holds_violations_and_order() {
    let trace = chrome(false);
    let slices = validate_chrome(&trace);
    let events = trace["traceEvents"].as_array().unwrap();
    // worker 101: wait A, hold A, wait B, hold B, then the out-of-order release of A reopens B.
    assert_eq!(slices[&(100, 101)], 5);
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["tid"] == 101 && e["ph"] == "B")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wait mmap_lock write 0x1", "mmap_lock write 0x1", "wait mmap_lock read 0x2", "mmap_lock read 0x2", "mmap_lock read 0x2"]);
    let violations: Vec<&Value> = events.iter().filter(|e| e["cat"] == "violation").collect();
    assert_eq!(violations.len(), 4);
    let walk = violations.iter().find(|v| v["args"]["rule"] == "pagewalk-lock-mode").unwrap();
    assert_eq!((walk["ph"].as_str(), walk["tid"].as_u64()), (Some("i"), Some(201)));
    assert!(walk["args"]["fix"].as_str().unwrap().contains("walk_lock"));
    assert!(walk["args"]["source"].as_str().unwrap().contains("mm/pagewalk.c"));
    assert_eq!(walk["args"]["stack"][1], "my_module_walk+0x44/0x90 [vmalock_test]");
    assert_eq!(walk["args"]["events"].as_array().unwrap().len(), 1);
    // The one lock-order edge, as the lock-order model learns it: A held (taken at 2 µs) when
    // the attempt on B began (3 µs: the dependency exists from the wait on, as in lockdep).
    // Two mms' mmap_locks nested are one class at two depths.
    let flows: Vec<&Value> = events.iter().filter(|e| e["cat"] == "lock_order").collect();
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert_eq!((flows[0]["ts"].as_f64(), flows[1]["ts"].as_f64()), (Some(2.0), Some(3.0)));
    assert_eq!(flows[0]["name"], "mmap_lock -> mmap_lock/1");
    // The walker's exit closed its hold.
    assert!(events.iter().any(|e| e["tid"] == 201 && e["ph"] == "E" && e["args"]["end"] == "task exited"));
    assert_eq!(trace["otherData"]["kernel_release"], "6.18.0-fixture");
}

#[test]
fn exports_leak_no_kernel_address_unless_asked() {
    for format in [Format::Chrome, Format::Jsonl] {
        let mut out = Vec::new();
        export(FIXTURE.as_bytes(), &mut out, format, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        for raw in RAW {
            assert!(!text.contains(raw), "{format:?} export leaks {raw}");
        }
        let mut out = Vec::new();
        export(FIXTURE.as_bytes(), &mut out, format, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(RAW[0]) && text.contains(RAW[3]), "--raw-pointers keeps addresses ({format:?})");
    }
}

#[test]
fn pseudonyms_are_stable_across_exports_of_one_trace() {
    let export_text = |f| {
        let mut out = Vec::new();
        export(FIXTURE.as_bytes(), &mut out, f, false).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(export_text(Format::Chrome), export_text(Format::Chrome));
    assert_eq!(export_text(Format::Jsonl), export_text(Format::Jsonl));
}

#[test]
fn a_scrubbed_jsonl_export_replays_to_the_same_verdicts() {
    let mut out = Vec::new();
    let done = export(FIXTURE.as_bytes(), &mut out, Format::Jsonl, false).unwrap();
    assert_eq!(done.events, 14);
    let rules = |bytes: &[u8]| {
        let mut rules = Vec::new();
        crate::replay::replay(bytes, |v| rules.push((v.rule, v.task.tid, v.ts_ns))).unwrap();
        rules
    };
    let original = rules(FIXTURE.as_bytes());
    assert_eq!(original.len(), 4);
    assert_eq!(rules(&out), original);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r#""mm":"0x1""#), "{text}");
    assert!(text.lines().last().unwrap().contains(r#""type":"footer""#));
}

#[test]
fn a_truncated_trace_still_exports_what_it_has() {
    let cut = &FIXTURE[..FIXTURE.rfind("{\"type\":\"footer\"").unwrap()];
    let mut out = Vec::new();
    let done = export(cut.as_bytes(), &mut out, Format::Chrome, false).unwrap();
    assert!(done.warnings.iter().any(|w| w.contains("no footer")), "{:?}", done.warnings);
    validate_chrome(&serde_json::from_slice(&out).unwrap());
}

#[test]
fn not_a_trace_is_a_clear_error() {
    let err = export(&b"hello\n"[..], Vec::new(), Format::Chrome, false).unwrap_err();
    assert!(format!("{err:#}").contains("line 1"), "{err:#}");
}

/// A trace whose releases are missing (filtered or lost) must neither pile slices up nor make
/// reopen ever more of them at each close: depth stays bounded and a loss closes everything.
#[test]
fn missing_releases_and_losses_keep_slices_bounded() {
    let mut t = String::from(FIXTURE.lines().next().unwrap());
    t.push('\n');
    for i in 0..5_000u64 {
        let lost = if i == 4_000 { r#","lost_before":7,"loss_epoch":7"# } else if i > 4_000 { r#","loss_epoch":7"# } else { "" };
        t += &format!(
            r#"{{"type":"event","ts_ns":{},"cpu":0,"tid":9,"tgid":9,"comm":"w"{lost},"kind":"mmap_lock_acquired","mm":"0xffff888000001000","write":false,"success":true}}"#,
            1_000_000_000 + i * 100
        );
        t.push('\n');
    }
    let mut out = Vec::new();
    export(t.as_bytes(), &mut out, Format::Chrome, false).unwrap();
    let trace: Value = serde_json::from_slice(&out).unwrap();
    validate_chrome(&trace);
    let events = trace["traceEvents"].as_array().unwrap();
    // Each acquire opens one slice; closing never reopens more than MAX_DEPTH.
    assert!(events.len() < 5_000 * 3, "{} events", events.len());
    assert!(events.iter().any(|e| e["cat"] == "loss"));
}

/// A protobuf field as read back: (field number, varint / fixed64 value, or bytes).
#[derive(Debug, Clone)]
enum Pb {
    Int(u64),
    Bytes(Vec<u8>),
}

/// Decodes one message's fields; panics on anything malformed (a truncated varint or length,
/// an unknown wire type), which is what a reader like trace_processor would reject.
fn decode(mut b: &[u8]) -> Vec<(u32, Pb)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let (&byte, rest) = b.split_first().expect("truncated varint");
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
            assert!(shift < 64, "varint too long");
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let val = match wire {
            0 => Pb::Int(varint(&mut b)),
            1 => {
                let (v, rest) = b.split_at(8);
                b = rest;
                Pb::Int(u64::from_le_bytes(v.try_into().unwrap()))
            }
            2 => {
                let len = varint(&mut b) as usize;
                assert!(len <= b.len(), "length past the end");
                let (v, rest) = b.split_at(len);
                b = rest;
                Pb::Bytes(v.to_vec())
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((field, val));
    }
    out
}

fn get(m: &[(u32, Pb)], f: u32) -> Option<&Pb> {
    m.iter().find(|(n, _)| *n == f).map(|(_, v)| v)
}
fn get_int(m: &[(u32, Pb)], f: u32) -> Option<u64> {
    match get(m, f)? {
        Pb::Int(v) => Some(*v),
        Pb::Bytes(_) => None,
    }
}
fn get_str(m: &[(u32, Pb)], f: u32) -> Option<String> {
    match get(m, f)? {
        Pb::Bytes(b) => Some(String::from_utf8(b.clone()).expect("UTF-8 string field")),
        Pb::Int(_) => None,
    }
}
fn get_msg(m: &[(u32, Pb)], f: u32) -> Option<Vec<(u32, Pb)>> {
    match get(m, f)? {
        Pb::Bytes(b) => Some(decode(b)),
        Pb::Int(_) => None,
    }
}

/// The Perfetto export read back by field number: every packet a TracePacket of the Trace,
/// every track event on a described track with a timestamp and the trusted sequence, slices
/// balanced per track, flows begun and terminated once each, and the same slices, violations
/// and flows as the Chrome export of the same trace.
#[test]
fn perfetto_export_is_well_formed_and_matches_the_chrome_export() {
    use super::perfetto::{event_type as ty, field as f};
    let mut out = Vec::new();
    let done = export(FIXTURE.as_bytes(), &mut out, Format::Perfetto, false).unwrap();
    assert_eq!(done.violations, 4);
    let mut described = std::collections::HashSet::new();
    let (mut open, mut begins): (HashMap<u64, usize>, usize) = (HashMap::new(), 0);
    let (mut flow_starts, mut flow_ends) = (BTreeMap::new(), BTreeMap::new());
    let mut violations = 0;
    let mut threads_named = 0;
    for (field, packet) in decode(&out) {
        assert_eq!(field, f::TRACE_PACKET, "Trace has only packets");
        let Pb::Bytes(packet) = packet else { panic!("a packet is a message") };
        let p = decode(&packet);
        if let Some(d) = get_msg(&p, f::PACKET_TRACK_DESCRIPTOR) {
            let uuid = get_int(&d, f::TRACK_UUID).expect("a track has a uuid");
            assert!(described.insert(uuid), "track {uuid} described twice");
            if let Some(th) = get_msg(&d, f::TRACK_THREAD) {
                assert!(get_int(&th, f::THREAD_PID).is_some() && get_int(&th, f::THREAD_TID).is_some());
                threads_named += usize::from(get_str(&th, f::THREAD_NAME).is_some());
            }
            continue;
        }
        let e = get_msg(&p, f::PACKET_TRACK_EVENT).expect("a packet is a track descriptor or a track event");
        assert!(get_int(&p, f::PACKET_TIMESTAMP).is_some(), "event without timestamp");
        assert_eq!(get_int(&p, f::PACKET_SEQUENCE_ID), Some(1));
        let track = get_int(&e, f::EVENT_TRACK_UUID).expect("event without track");
        assert!(described.contains(&track), "event on track {track} before its descriptor");
        let name = get_str(&e, f::EVENT_NAME).unwrap_or_default();
        match get_int(&e, f::EVENT_TYPE).expect("event without type") {
            ty::SLICE_BEGIN => {
                *open.entry(track).or_default() += 1;
                begins += 1;
            }
            ty::SLICE_END => {
                let n = open.get_mut(&track).filter(|n| **n > 0).expect("END without BEGIN on its track");
                *n -= 1;
            }
            ty::INSTANT => violations += usize::from(name.starts_with("VIOLATION ")),
            t => panic!("unexpected event type {t}"),
        }
        for (n, v) in &e {
            match (*n, v) {
                (f::EVENT_FLOW_IDS, Pb::Int(id)) => *flow_starts.entry(*id).or_insert(0) += 1,
                (f::EVENT_TERMINATING_FLOW_IDS, Pb::Int(id)) => *flow_ends.entry(*id).or_insert(0) += 1,
                (f::EVENT_DEBUG_ANNOTATIONS, Pb::Bytes(a)) => {
                    assert!(get_str(&decode(a), f::ANNOTATION_NAME).is_some(), "annotation without a name")
                }
                _ => {}
            }
        }
    }
    assert!(open.values().all(|n| *n == 0), "slices left open: {open:?}");
    assert!(threads_named > 0);
    assert_eq!(flow_starts.keys().collect::<Vec<_>>(), flow_ends.keys().collect::<Vec<_>>(), "every flow begins and ends");
    assert!(flow_starts.values().chain(flow_ends.values()).all(|n| *n == 1));

    // The same content as the Chrome export.
    let chrome = chrome(false);
    let events = chrome["traceEvents"].as_array().unwrap();
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert_eq!(begins, count("B"));
    assert_eq!(flow_starts.len(), count("s"));
    let chrome_violations = events.iter().filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("VIOLATION "))).count();
    assert_eq!(violations, chrome_violations);
    assert_eq!(violations, 4);
    // Pointers are scrubbed here too.
    let text = String::from_utf8_lossy(&out);
    for raw in RAW {
        assert!(!text.contains(raw), "{raw} leaked into the Perfetto export");
    }
}
