//! Issue 8: no allocation per event in userspace. A task's steady round of events (an mmap_lock
//! write hold with a VMA write lock, a vma_prepare, a vm_flags change and an i_mmap_rwsem
//! inside it: an mprotect's events in a `--all-events` run) is decoded from the ring's
//! bytes, applied to the model and written to a trace of each format (`record`) over and over;
//! once the model has seen the round, the per-event path must not touch the allocator. A counting allocator (this test binary's own)
//! counts on the test's thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use tracer_common::{RawEvent, fact, flag, kind, lock_class, site, snap};
use vmalock::event::Event;
use vmalock::model::Model;
use vmalock::trace::{Header, TraceFormat, TraceWriter};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MM: u64 = 0xffff_8880_0a00_0000;
const VMA: u64 = 0xffff_8880_0b00_0000;
const MAPPING: u64 = 0xffff_8880_0c00_0000;

/// One round, as the ring would carry it: (kind, flags, vma, args, facts).
fn round() -> Vec<(u16, u16, u64, [u64; 3], u32)> {
    let w = flag::WRITE;
    let ws = flag::WRITE | flag::SUCCESS;
    let legal = fact::MMAP_KNOWN | fact::MMAP_LOCKED | fact::MMAP_WRITE_LOCKED | fact::MMAP_WRITER_IS_CURRENT | fact::VMA_KNOWN;
    vec![
        (kind::MMAP_START, w, 0, [0; 3], 0),
        (kind::MMAP_ACQUIRED, ws, 0, [0; 3], 0),
        (kind::VMA_WRITE_LOCK, 0, VMA, [0; 3], legal),
        (kind::VMA_PREPARE, 0, VMA, [0; 3], legal | fact::VMA_WRITE_LOCKED),
        (kind::VMA_MODIFIED, 0, VMA, [0x73, 0x71, site::MPROTECT_FIXUP | (snap::FLAGS_CHANGED << 16)], legal | fact::VMA_WRITE_LOCKED),
        (kind::LOCK_ACQUIRE, ws, 0, [MAPPING, lock_class::I_MMAP_RWSEM, 0], 0),
        (kind::LOCK_RELEASE, ws, 0, [MAPPING, lock_class::I_MMAP_RWSEM, 0], 0),
        (kind::MMAP_RELEASED, w, 0, [0; 3], 0),
    ]
}

fn bytes(r: &RawEvent) -> &[u8] {
    // SAFETY: RawEvent is repr(C) plain old data.
    unsafe { std::slice::from_raw_parts((r as *const RawEvent).cast::<u8>(), std::mem::size_of::<RawEvent>()) }
}

#[test]
fn decoding_and_modelling_a_steady_round_of_events_allocates_nothing() {
    let mut comm = [0u8; 16];
    comm[..7].copy_from_slice(b"mprotec");
    let mut raw = RawEvent { tid: 7, tgid: 7, mm: MM, comm, flags: flag::TASK_NEW, ..Default::default() };
    let mut model = Model::new();
    let mut out = Vec::with_capacity(16);
    let mut ts = 1_000u64;
    let round = round();
    let mut jsonl = TraceWriter::with_format(std::io::sink(), &Header::default(), TraceFormat::Jsonl).unwrap();
    let mut binary = TraceWriter::with_format(std::io::sink(), &Header::default(), TraceFormat::Binary).unwrap();
    let mut run = |model: &mut Model, out: &mut Vec<_>, n: usize| {
        for _ in 0..n {
            for &(k, flags, vma, args, facts) in &round {
                ts += 100;
                raw.ts_ns = ts;
                raw.kind = k;
                raw.flags = flags | flag::TASK_NEW;
                raw.vma = vma;
                raw.args = args;
                raw.facts = facts;
                raw.stack_id = if k == kind::LOCK_ACQUIRE { 3 } else { -1 };
                let ev = Event::decode(bytes(&raw)).expect("decodes");
                model.apply(&ev, out);
                out.clear();
                jsonl.event(&ev).unwrap();
                binary.event(&ev).unwrap();
            }
        }
    };
    // The first rounds build the model's per-task and lock-order state.
    run(&mut model, &mut out, 100);
    COUNTING.with(|c| c.set(true));
    run(&mut model, &mut out, 10_000);
    COUNTING.with(|c| c.set(false));
    let n = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(n, 0, "{n} allocations over 80 000 events in steady state ({:.2} per event)", n as f64 / 80_000.0);
    let seen: u64 = model.stats().events.iter().map(|(_, n)| n).sum();
    assert!(seen > 80_000, "the model saw the events: {:?}", model.stats());
}
