//! The binary form of a trace (`record --trace-format binary`): the same header, events and
//! footer as the JSON Lines form, about half its size and several times faster to
//! replay, for long recordings. `vmalock export -f jsonl` turns one into JSON Lines.
//!
//! Layout, all integers little-endian:
//! - [`MAGIC`] (8 bytes), then the container version (u32, [`VERSION`]);
//! - the header: u32 length, then the header's JSON (the JSON Lines header line itself, so its
//!   checks and its own `version` apply unchanged);
//! - records: u32 length of what follows, a tag byte ([`tag`]), then the body: an event
//!   encoded field by field below, or the footer's JSON.
//!
//! Each record carries its length, so a reader knows a cut-short last record from a corrupt one
//! and never reads past a record whatever its body says.

use crate::event::{Comm, Event, Facts, LockClass, NameSet, PREPARE_ROLES, SNAP_CHANGES, WalkLock, What};

/// First bytes of a binary trace. The high first byte keeps it from being taken for text
/// (and shows when something mangled it as text), as PNG's does.
pub const MAGIC: &[u8; 8] = b"\x89VMALOCK";
/// The newest container version this build reads, and the one it writes.
pub const VERSION: u32 = 1;

/// Record tags.
pub mod tag {
    pub const EVENT: u8 = 1;
    pub const FOOTER: u8 = 2;
}

/// Event kinds in a record; fixed numbers, never reused, independent of `What`'s order.
mod kind {
    pub const MMAP_LOCK_START: u8 = 1;
    pub const MMAP_LOCK_ACQUIRED: u8 = 2;
    pub const MMAP_LOCK_RELEASED: u8 = 3;
    pub const TASK_EXIT: u8 = 4;
    pub const VMA_WRITE_LOCK: u8 = 5;
    pub const PAGE_WALK: u8 = 6;
    pub const PAGE_WALK_VMA: u8 = 7;
    pub const VMA_PREPARE: u8 = 8;
    pub const VMA_NEW: u8 = 9;
    pub const VMA_SNAPSHOT: u8 = 10;
    pub const VMA_MODIFIED: u8 = 11;
    pub const LOCK_ACQUIRE: u8 = 12;
    pub const LOCK_RELEASE: u8 = 13;
    pub const STACK: u8 = 14;
    pub const MISSED: u8 = 15;
}

/// `Event` flag bits.
const TASK_NEW: u8 = 1;
const HAS_STACK: u8 = 2;
/// `Event::ts_coarse`.
const TS_COARSE: u8 = 4;
/// `Option<WalkLock>` for a kernel without walk_lock.
const NO_WALK_LOCK: u8 = 0xff;

/// Appends `ev`'s record body (no length, no tag) to `out`.
pub fn encode_event(ev: &Event, out: &mut Vec<u8>) {
    let mut e = Enc(out);
    e.u64(ev.ts_ns);
    e.u32(ev.cpu);
    e.u32(ev.tid);
    e.u32(ev.tgid);
    e.u32(ev.lost_before);
    e.u32(ev.loss_epoch);
    let flags = if ev.task_new { TASK_NEW } else { 0 }
        | if ev.stack.is_some() { HAS_STACK } else { 0 }
        | if ev.ts_coarse { TS_COARSE } else { 0 };
    e.u8(flags);
    if let Some(id) = ev.stack {
        e.u32(id);
    }
    e.str(&ev.comm);
    match &ev.what {
        What::MmapLockStart { mm, write, vma_read } => {
            e.u8(kind::MMAP_LOCK_START);
            e.u64(*mm);
            e.bool(*write);
            e.opt(*vma_read);
        }
        What::MmapLockAcquired { mm, write, success, vma_read, trylock } => {
            e.u8(kind::MMAP_LOCK_ACQUIRED);
            e.u64(*mm);
            e.bool(*write);
            e.bool(*success);
            e.opt(*vma_read);
            e.bool(*trylock);
        }
        What::MmapLockReleased { mm, write } => {
            e.u8(kind::MMAP_LOCK_RELEASED);
            e.u64(*mm);
            e.bool(*write);
        }
        What::TaskExit => e.u8(kind::TASK_EXIT),
        What::VmaWriteLock { mm, vma, facts } => {
            e.u8(kind::VMA_WRITE_LOCK);
            e.u64(*mm);
            e.u64(*vma);
            e.u32(facts.0);
        }
        What::PageWalk { mm, vma, walk_lock, site, facts } => {
            e.u8(kind::PAGE_WALK);
            e.u64(*mm);
            e.u64(*vma);
            e.walk_lock(*walk_lock);
            e.u64(*site);
            e.u32(facts.0);
        }
        What::PageWalkVma { mm, vma, walk_lock, facts } => {
            e.u8(kind::PAGE_WALK_VMA);
            e.u64(*mm);
            e.u64(*vma);
            e.walk_lock(*walk_lock);
            e.u32(facts.0);
        }
        What::VmaPrepare { mm, vma, unlocked, first_unlocked, facts } => {
            e.u8(kind::VMA_PREPARE);
            e.u64(*mm);
            e.u64(*vma);
            e.names(unlocked);
            e.u64(*first_unlocked);
            e.u32(facts.0);
        }
        What::VmaNew { mm, vma, site, facts } => {
            e.u8(kind::VMA_NEW);
            e.u64(*mm);
            e.u64(*vma);
            e.u64(*site);
            e.u32(facts.0);
        }
        What::VmaSnapshot { mm, vma, vm_start, changes, flags_changed, facts } => {
            e.u8(kind::VMA_SNAPSHOT);
            e.u64(*mm);
            e.u64(*vma);
            e.u64(*vm_start);
            e.names(changes);
            e.u64(*flags_changed);
            e.u32(facts.0);
        }
        What::VmaModified { mm, vma, site, changes, flags_before, flags_after, facts } => {
            e.u8(kind::VMA_MODIFIED);
            e.u64(*mm);
            e.u64(*vma);
            e.u64(*site);
            e.names(changes);
            e.u64(*flags_before);
            e.u64(*flags_after);
            e.u32(facts.0);
        }
        What::LockAcquire { class, lock, write, trylock, success, vma_read } => {
            e.u8(kind::LOCK_ACQUIRE);
            e.u8(class.rank());
            e.u64(*lock);
            e.bool(*write);
            e.bool(*trylock);
            e.bool(*success);
            e.opt(*vma_read);
        }
        What::LockRelease { class, lock, write } => {
            e.u8(kind::LOCK_RELEASE);
            e.u8(class.rank());
            e.u64(*lock);
            e.bool(*write);
        }
        What::Stack { id, frames } => {
            e.u8(kind::STACK);
            e.u32(*id);
            e.strs(frames);
        }
        What::Missed { count, span } => {
            e.u8(kind::MISSED);
            e.u64(*count);
            e.u64(*span);
        }
    }
}

/// The event in a record body; the error says what is wrong with it.
pub fn decode_event(body: &[u8]) -> Result<Event, String> {
    let mut d = Dec { b: body, i: 0 };
    let ts_ns = d.u64()?;
    let cpu = d.u32()?;
    let tid = d.u32()?;
    let tgid = d.u32()?;
    let lost_before = d.u32()?;
    let loss_epoch = d.u32()?;
    let flags = d.u8()?;
    if flags & !(TASK_NEW | HAS_STACK | TS_COARSE) != 0 {
        return Err(format!("unknown event flags {flags:#x}"));
    }
    let stack = if flags & HAS_STACK != 0 { Some(d.u32()?) } else { None };
    let comm = d.comm()?;
    let what = match d.u8()? {
        kind::MMAP_LOCK_START => What::MmapLockStart { mm: d.u64()?, write: d.bool()?, vma_read: d.opt()? },
        kind::MMAP_LOCK_ACQUIRED => What::MmapLockAcquired {
            mm: d.u64()?,
            write: d.bool()?,
            success: d.bool()?,
            vma_read: d.opt()?,
            trylock: d.bool()?,
        },
        kind::MMAP_LOCK_RELEASED => What::MmapLockReleased { mm: d.u64()?, write: d.bool()? },
        kind::TASK_EXIT => What::TaskExit,
        kind::VMA_WRITE_LOCK => What::VmaWriteLock { mm: d.u64()?, vma: d.u64()?, facts: Facts(d.u32()?) },
        kind::PAGE_WALK => What::PageWalk {
            mm: d.u64()?,
            vma: d.u64()?,
            walk_lock: d.walk_lock()?,
            site: d.u64()?,
            facts: Facts(d.u32()?),
        },
        kind::PAGE_WALK_VMA => {
            What::PageWalkVma { mm: d.u64()?, vma: d.u64()?, walk_lock: d.walk_lock()?, facts: Facts(d.u32()?) }
        }
        kind::VMA_PREPARE => What::VmaPrepare {
            mm: d.u64()?,
            vma: d.u64()?,
            unlocked: d.names(PREPARE_ROLES)?,
            first_unlocked: d.u64()?,
            facts: Facts(d.u32()?),
        },
        kind::VMA_NEW => What::VmaNew { mm: d.u64()?, vma: d.u64()?, site: d.u64()?, facts: Facts(d.u32()?) },
        kind::VMA_SNAPSHOT => What::VmaSnapshot {
            mm: d.u64()?,
            vma: d.u64()?,
            vm_start: d.u64()?,
            changes: d.names(SNAP_CHANGES)?,
            flags_changed: d.u64()?,
            facts: Facts(d.u32()?),
        },
        kind::VMA_MODIFIED => What::VmaModified {
            mm: d.u64()?,
            vma: d.u64()?,
            site: d.u64()?,
            changes: d.names(SNAP_CHANGES)?,
            flags_before: d.u64()?,
            flags_after: d.u64()?,
            facts: Facts(d.u32()?),
        },
        kind::LOCK_ACQUIRE => What::LockAcquire {
            class: d.class()?,
            lock: d.u64()?,
            write: d.bool()?,
            trylock: d.bool()?,
            success: d.bool()?,
            vma_read: d.opt()?,
        },
        kind::LOCK_RELEASE => What::LockRelease { class: d.class()?, lock: d.u64()?, write: d.bool()? },
        kind::STACK => What::Stack { id: d.u32()?, frames: d.strs()? },
        kind::MISSED => What::Missed { count: d.u64()?, span: d.u64()? },
        k => return Err(format!("unknown event kind {k}")),
    };
    if d.i != body.len() {
        return Err(format!("{} bytes left over after the event", body.len() - d.i));
    }
    Ok(Event { ts_ns, cpu, tid, tgid, comm, task_new: flags & TASK_NEW != 0, ts_coarse: flags & TS_COARSE != 0, lost_before, loss_epoch, stack, what })
}

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(v.into());
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn opt(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn walk_lock(&mut self, v: Option<WalkLock>) {
        self.u8(v.map_or(NO_WALK_LOCK, |w| w as u8));
    }
    /// A string of up to 64 KiB (comms, symbol names, field names); longer is cut at a
    /// character boundary rather than written wrong.
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    /// A name set as its list of names (the format's own, kept from when it was strings).
    fn names(&mut self, v: &NameSet) {
        self.u16(v.len() as u16);
        for n in v.iter() {
            self.str(n);
        }
    }
    fn strs(&mut self, v: &[String]) {
        let n = v.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        for s in &v[..n] {
            self.str(s);
        }
    }
}

struct Dec<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let bytes = self
            .b
            .get(self.i..self.i + n)
            .ok_or_else(|| format!("record ends {} bytes early", self.i + n - self.b.len()))?;
        self.i += n;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("byte {b} where a boolean should be")),
        }
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn opt(&mut self) -> Result<Option<u64>, String> {
        Ok(if self.bool()? { Some(self.u64()?) } else { None })
    }
    fn walk_lock(&mut self) -> Result<Option<WalkLock>, String> {
        match self.u8()? {
            NO_WALK_LOCK => Ok(None),
            v => WalkLock::from_raw(v.into()).map(Some).ok_or_else(|| format!("unknown walk_lock {v}")),
        }
    }
    fn class(&mut self) -> Result<LockClass, String> {
        let v = self.u8()?;
        [LockClass::IRwsem, LockClass::MmapLock, LockClass::VmaLock, LockClass::IMmapRwsem, LockClass::AnonVma]
            .into_iter()
            .find(|c| c.rank() == v)
            .ok_or_else(|| format!("unknown lock class {v}"))
    }
    fn str(&mut self) -> Result<String, String> {
        self.str_ref().map(str::to_owned)
    }
    fn str_ref(&mut self) -> Result<&'a str, String> {
        let n = self.u16()?;
        let bytes = self.take(n.into())?;
        std::str::from_utf8(bytes).map_err(|e| format!("a string that is not UTF-8: {e}"))
    }
    /// A comm: read in place, no allocation.
    fn comm(&mut self) -> Result<Comm, String> {
        let s = self.str_ref()?;
        Comm::new(s).ok_or_else(|| format!("a comm of {} bytes (a task's comm is at most 47)", s.len()))
    }
    fn names(&mut self, table: crate::nameset::Table) -> Result<NameSet, String> {
        let mut bits = 0;
        for _ in 0..self.u16()? {
            let n = self.str_ref()?;
            bits |= NameSet::from_names([n], table)?.bits();
        }
        Ok(NameSet::from_bits(bits, table))
    }
    fn strs(&mut self) -> Result<Vec<String>, String> {
        (0..self.u16()?).map(|_| self.str()).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tracer_common::{fact, site};
    use crate::trace::{Footer, Header, TraceErrorKind, TraceFormat, TraceReader, TraceWriter};

    /// One event of every kind, with optional fields both set and not (and only values JSON
    /// Lines can hold: it writes names, so an unnamed site or fact bit does not survive it).
    pub(crate) fn every_kind() -> Vec<Event> {
        let (mm, vma) = (0xffff_8880_0123_4000, 0xffff_8880_0555_6600);
        let whats = vec![
            What::MmapLockStart { mm, write: true, vma_read: None },
            What::MmapLockStart { mm, write: false, vma_read: Some(vma) },
            What::MmapLockAcquired { mm, write: true, success: false, vma_read: Some(vma), trylock: true },
            What::MmapLockReleased { mm, write: false },
            What::TaskExit,
            What::VmaWriteLock { mm, vma, facts: Facts(fact::MMAP_KNOWN | fact::MMAP_LOCKED | fact::VMA_WRITE_LOCKED) },
            What::PageWalk { mm, vma, walk_lock: Some(WalkLock::PgwalkWrlockVerify), site: site::WALK_PAGE_VMA, facts: Facts(fact::MMAP_KNOWN) },
            What::PageWalk { mm, vma, walk_lock: None, site: site::WALK_PAGE_RANGE, facts: Facts(0) },
            What::PageWalkVma { mm, vma, walk_lock: Some(WalkLock::PgwalkVmaRdlockVerify), facts: Facts(fact::VMA_KNOWN | fact::VMA_READ_LOCKED | fact::TRYLOCK) },
            What::VmaPrepare { mm, vma, unlocked: NameSet::from_names(["adj_next", "remove"], PREPARE_ROLES).unwrap(), first_unlocked: vma + 0x100, facts: Facts(fact::MM_SEQ_ODD) },
            What::VmaNew { mm, vma, site: site::VMA_LINK, facts: Facts(fact::VMA_SEQ_UNSET) },
            What::VmaSnapshot { mm, vma, vm_start: 0x7f00_0000_0000, changes: NameSet::from_names(["vm_flags"], SNAP_CHANGES).unwrap(), flags_changed: 0x100, facts: Facts(fact::MM_SEQCOUNT) },
            What::VmaModified {
                mm,
                vma,
                site: site::MPROTECT_FIXUP,
                changes: NameSet::empty(SNAP_CHANGES),
                flags_before: 0x73,
                flags_after: 0x2073,
                facts: Facts(fact::MMAP_WRITER_IS_CURRENT),
            },
            What::LockAcquire { class: LockClass::AnonVma, lock: 0x42, write: true, trylock: false, success: true, vma_read: None },
            What::LockAcquire { class: LockClass::IRwsem, lock: 1, write: false, trylock: true, success: false, vma_read: Some(vma) },
            What::LockRelease { class: LockClass::IMmapRwsem, lock: 0x42, write: true },
            What::Stack { id: 7, frames: vec!["vt_write+0x7a [vmalock_test]".into(), "ksys_write+0x6f".into()] },
            What::Missed { count: 2, span: 100 },
        ];
        whats
            .into_iter()
            .enumerate()
            .map(|(i, what)| Event {
                ts_ns: 1_000 + i as u64,
                cpu: i as u32 % 3,
                tid: 100 + i as u32,
                tgid: 100,
                comm: if i == 2 { "kworker/ü:1".into() } else { "mix".into() },
                task_new: i % 2 == 0,
                ts_coarse: i % 3 == 0,
                lost_before: if i == 5 { 3 } else { 0 },
                loss_epoch: if i >= 5 { 1 } else { 0 },
                stack: (i % 3 == 0).then_some(i as u32),
                what,
            })
            .collect()
    }

    fn footer() -> Footer {
        Footer { events: 18, lost_events: 3, lost_per_cpu: vec![3, 0], duration_ns: 5, stop_reason: "SIGINT".into() }
    }

    fn written(format: TraceFormat) -> Vec<u8> {
        let header = Header { kernel_release: "7.2.0-test".into(), ..Header::default() };
        let mut w = TraceWriter::with_format(Vec::new(), &header, format).unwrap();
        for ev in every_kind() {
            w.event(&ev).unwrap();
        }
        w.finish(footer()).unwrap()
    }

    /// (events read before the end or the first error, the error, the warnings).
    fn read(bytes: &[u8]) -> (Vec<Event>, Option<String>, Vec<String>) {
        let (_, mut r) = TraceReader::open(bytes).unwrap();
        let mut events = Vec::new();
        let mut err = None;
        for item in r.by_ref() {
            match item {
                Ok(ev) => events.push(ev),
                Err(e) => err = Some(e.to_string()),
            }
        }
        (events, err, r.warnings().to_vec())
    }

    #[test]
    fn every_kind_reads_back_the_same_from_both_forms() {
        let binary = written(TraceFormat::Binary);
        assert!(binary.starts_with(MAGIC));
        let jsonl = written(TraceFormat::Jsonl);
        assert!(binary.len() * 3 < jsonl.len() * 2, "binary {} bytes, JSON Lines {}", binary.len(), jsonl.len());
        for bytes in [&binary, &jsonl] {
            let (header, mut r) = TraceReader::open(&bytes[..]).unwrap();
            assert_eq!(header.kernel_release, "7.2.0-test");
            let events: Vec<Event> = r.by_ref().map(Result::unwrap).collect();
            assert_eq!(events, every_kind());
            assert_eq!(r.footer(), Some(&footer()));
            assert!(r.warnings().is_empty(), "{:?}", r.warnings());
        }
    }

    /// A recording killed at any byte after its header gives the events before the cut and a
    /// warning, never an error: that is what a killed recorder leaves.
    #[test]
    fn a_cut_anywhere_after_the_header_keeps_every_whole_record() {
        let bytes = written(TraceFormat::Binary);
        let header_end = MAGIC.len() + 4 + 4 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let all = every_kind();
        for cut in header_end..bytes.len() {
            let (events, err, warnings) = read(&bytes[..cut]);
            assert_eq!(err, None, "cut at {cut}");
            assert_eq!(events[..], all[..events.len()], "cut at {cut}");
            assert!(warnings.iter().any(|w| w.starts_with("no footer")), "cut at {cut}: {warnings:?}");
        }
        for cut in 1..header_end {
            let e = TraceReader::open(&bytes[..cut]).err().unwrap_or_else(|| panic!("opened a header cut at {cut}"));
            assert!(e.to_string().contains("cut short"), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn corrupt_records_are_errors_that_name_the_record() {
        let bytes = written(TraceFormat::Binary);
        let header_end = MAGIC.len() + 8 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let first_len = u32::from_le_bytes(bytes[header_end..header_end + 4].try_into().unwrap()) as usize;
        let second = header_end + 4 + first_len;
        let with = |at: usize, b: u8| {
            let mut v = bytes.clone();
            v[at] = b;
            read(&v)
        };
        // The second event's tag, then its kind byte (after 4+4+4+4+4+1 fixed bytes, the comm).
        let (events, err, _) = with(second + 4, 9);
        assert_eq!(events.len(), 1);
        assert_eq!(err.as_deref(), Some("record 3: unknown record type tag 9"));
        let kind_at = second + 5 + 8 + 4 * 5 + 1 + 2 + 3;
        assert_eq!(with(kind_at, 99).1.as_deref(), Some("record 3: malformed record: unknown event kind 99"));
        // The write flag of the first event (mm_lock_start, no stack): not a boolean.
        let first_bool = header_end + 5 + 8 + 4 * 5 + 1 + 4 + 2 + 3 + 1 + 8;
        assert_eq!(with(first_bool, 7).1.as_deref(), Some("record 2: malformed record: byte 7 where a boolean should be"));
        // A record longer than a writer makes.
        let mut v = bytes.clone();
        v[header_end..header_end + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&v).1.unwrap().contains("longer than"));
        // Anything after the footer.
        let mut v = bytes.clone();
        v.extend_from_slice(&bytes[header_end..second]);
        assert_eq!(read(&v).1.as_deref(), Some("record 21: record after the footer"));
    }

    #[test]
    fn a_newer_container_or_another_binary_file_is_a_clear_error() {
        let mut bytes = written(TraceFormat::Binary);
        bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let e = TraceReader::open(&bytes[..]).err().unwrap();
        assert!(matches!(e.kind, TraceErrorKind::TooNew { found } if found == VERSION + 1));
        assert!(e.to_string().contains("binary trace container version 2 is newer"), "{e}");
        let e = TraceReader::open(&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..]).err().unwrap();
        assert_eq!(e.to_string(), "record 1: not a vmalock trace: expected a \"vmalock-trace\" header, found a binary file of another kind");
    }
}
