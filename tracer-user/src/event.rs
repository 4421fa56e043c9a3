//! Decoded events: what the model consumes and what a trace file stores, one per line.
//!
//! A [`RawEvent`] from the ring buffer is decoded once into an [`Event`]; from then on live runs
//! and replays handle exactly the same values.

use serde::{Deserialize, Serialize};
use tracer_common::{RawEvent, flag, kind};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub cpu: u32,
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    /// The task started after tracing began: every lock it holds was seen being taken.
    #[serde(default, skip_serializing_if = "is_false")]
    pub task_new: bool,
    /// Events lost on this CPU just before this one (ring buffer full).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_before: u32,
    /// Failed reserves on all CPUs before this event; a change means events were lost before
    /// this one, wherever they were lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub loss_epoch: u32,
    #[serde(flatten)]
    pub what: What,
}

/// What happened. Serialized flattened into the event line with a `kind` tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// `mmap_lock_start_locking`: about to take `mm`'s mmap_lock.
    MmapLockStart {
        #[serde(with = "hex")]
        mm: u64,
        write: bool,
    },
    /// `mmap_lock_acquire_returned`: the attempt finished (`success` is false for a failed
    /// trylock or an interrupted killable lock).
    MmapLockAcquired {
        #[serde(with = "hex")]
        mm: u64,
        write: bool,
        success: bool,
    },
    /// `mmap_lock_released`.
    MmapLockReleased {
        #[serde(with = "hex")]
        mm: u64,
        write: bool,
    },
    /// `sched_process_exit`: this thread is exiting.
    TaskExit,
    /// Not a kernel event: the kernel skipped `count` hook hits (BPF recursion protection, when
    /// a task was preempted inside one of our programs) somewhere within the next `span` events.
    /// Written by the live run into the stream so a replay is blind over the same stretch.
    Missed {
        count: u64,
        #[serde(default)]
        span: u64,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Kernel pointers as `"0xffff..."` strings: readable, and exact in every JSON reader
/// (a u64 above 2^53 is not).
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <&str>::deserialize(d)?;
        let digits = s
            .strip_prefix("0x")
            .ok_or_else(|| D::Error::custom(format!("expected a 0x-prefixed hex pointer, got {s:?}")))?;
        u64::from_str_radix(digits, 16).map_err(|e| D::Error::custom(format!("bad hex pointer {s:?}: {e}")))
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u16),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(
                f,
                "ring-buffer record of {n} bytes is shorter than a RawEvent ({} bytes): \
                 the eBPF object and this binary were built from different sources",
                std::mem::size_of::<RawEvent>()
            ),
            DecodeError::UnknownKind(k) => write!(f, "ring-buffer record has unknown kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Event {
    /// The marker for `count` hook hits the kernel skipped somewhere in the next `span` events.
    pub fn missed(count: u64, span: u64, after: Option<&Event>) -> Event {
        Event {
            ts_ns: after.map_or(0, |e| e.ts_ns),
            cpu: 0,
            tid: 0,
            tgid: 0,
            comm: String::new(),
            task_new: false,
            lost_before: 0,
            loss_epoch: after.map_or(0, |e| e.loss_epoch),
            what: What::Missed { count, span },
        }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < std::mem::size_of::<RawEvent>() {
            return Err(DecodeError::Short(bytes.len()));
        }
        // SAFETY: RawEvent is repr(C) plain old data and `bytes` is long enough; the read is
        // unaligned because the ring buffer only guarantees 8-byte alignment of the record.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Event::from_raw(&raw)
    }

    pub fn from_raw(raw: &RawEvent) -> Result<Event, DecodeError> {
        let write = raw.flags & flag::WRITE != 0;
        let what = match raw.kind {
            kind::MMAP_START => What::MmapLockStart { mm: raw.mm, write },
            kind::MMAP_ACQUIRED => What::MmapLockAcquired {
                mm: raw.mm,
                write,
                success: raw.flags & flag::SUCCESS != 0,
            },
            kind::MMAP_RELEASED => What::MmapLockReleased { mm: raw.mm, write },
            kind::TASK_EXIT => What::TaskExit,
            k => return Err(DecodeError::UnknownKind(k)),
        };
        let comm_len = raw.comm.iter().position(|&b| b == 0).unwrap_or(raw.comm.len());
        Ok(Event {
            ts_ns: raw.ts_ns,
            cpu: raw.cpu,
            tid: raw.tid,
            tgid: raw.tgid,
            comm: String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned(),
            task_new: raw.flags & flag::TASK_NEW != 0,
            lost_before: raw.lost_before,
            loss_epoch: raw.loss_epoch,
            what,
        })
    }

    /// The event kind's wire number, for per-kind counters.
    pub fn kind(&self) -> u16 {
        match self.what {
            What::MmapLockStart { .. } => kind::MMAP_START,
            What::MmapLockAcquired { .. } => kind::MMAP_ACQUIRED,
            What::MmapLockReleased { .. } => kind::MMAP_RELEASED,
            What::TaskExit => kind::TASK_EXIT,
            What::Missed { .. } => kind::MISSED,
        }
    }
}

/// Human name of a wire kind, for summaries.
pub fn kind_name(k: u16) -> &'static str {
    match k {
        kind::MMAP_START => "mmap_lock_start_locking",
        kind::MMAP_ACQUIRED => "mmap_lock_acquire_returned",
        kind::MMAP_RELEASED => "mmap_lock_released",
        kind::TASK_EXIT => "sched_process_exit",
        kind::MISSED => "missed (recursion protection)",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u16, flags: u16) -> RawEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"work");
        RawEvent { ts_ns: 5, mm: 0xffff_8880_0123_4000, tid: 11, tgid: 10, cpu: 1, kind, flags, comm, ..Default::default() }
    }

    #[test]
    fn decodes_each_kind_and_flag() {
        let e = Event::from_raw(&raw(kind::MMAP_ACQUIRED, flag::WRITE | flag::TASK_NEW)).unwrap();
        assert_eq!(e.what, What::MmapLockAcquired { mm: 0xffff_8880_0123_4000, write: true, success: false });
        assert!(e.task_new);
        assert_eq!(e.comm, "work");
        assert_eq!(Event::from_raw(&raw(kind::MMAP_RELEASED, 0)).unwrap().what, What::MmapLockReleased { mm: 0xffff_8880_0123_4000, write: false });
        assert_eq!(Event::from_raw(&raw(kind::TASK_EXIT, 0)).unwrap().what, What::TaskExit);
        assert_eq!(Event::from_raw(&raw(99, 0)), Err(DecodeError::UnknownKind(99)));
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Short(10)));
    }

    #[test]
    fn json_round_trip_keeps_pointers_exact() {
        let e = Event::from_raw(&raw(kind::MMAP_START, flag::WRITE)).unwrap();
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""mm":"0xffff888001234000""#), "{line}");
        assert!(line.contains(r#""kind":"mmap_lock_start""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}
