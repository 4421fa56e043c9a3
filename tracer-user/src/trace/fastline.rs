//! A fast path for the event lines that make up nearly all of a trace: the mmap_lock, rwsem,
//! exit and missed-hit events, exactly as [`TraceWriter`](super::TraceWriter) writes them.
//!
//! serde reads an event line through `#[serde(flatten)]` and an internally tagged enum, which
//! buffers every field as generic content before it knows the kind; that was four fifths of a
//! replay's time. This scanner reads those lines directly instead.
//!
//! It only ever says "I am sure" or "ask serde": anything but the writer's own form (an escape
//! in a string, whitespace, `null`, another field order, an unknown or repeated key, a missing
//! field, another kind, a number serde would reject) gives `None`, and the caller parses the line
//! with serde as before. So it can make a replay faster but never different, and every error message still
//! comes from serde. `tests::fast_path_agrees_with_serde` holds it to that.

use crate::event::{Comm, Event, LockClass, What};

/// The event on `line` if it is one of the fast kinds exactly as the writer writes it; `None`
/// means "parse it with serde".
///
/// The writer's field order is fixed (the declaration order of `Event` and `What`, optional
/// fields left out when empty), so the line is matched against that sequence of literals.
pub fn event(line: &[u8]) -> Option<Event> {
    let mut s = Scan { b: line, i: 0 };
    s.lit(b"{\"type\":\"event\",\"ts_ns\":")?;
    let ts_ns = s.uint()?;
    s.lit(b",\"cpu\":")?;
    let cpu = s.u32()?;
    s.lit(b",\"tid\":")?;
    let tid = s.u32()?;
    s.lit(b",\"tgid\":")?;
    let tgid = s.u32()?;
    s.lit(b",\"comm\":")?;
    let comm = Comm::new(std::str::from_utf8(s.string()?).ok()?)?;
    // Written only when true / non-zero / present.
    let task_new = s.opt_lit(b",\"task_new\":true");
    let ts_coarse = s.opt_lit(b",\"ts_coarse\":true");
    let lost_before = if s.opt_lit(b",\"lost_before\":") { s.u32()? } else { 0 };
    let loss_epoch = if s.opt_lit(b",\"loss_epoch\":") { s.u32()? } else { 0 };
    let stack = if s.opt_lit(b",\"stack\":") { Some(s.u32()?) } else { None };
    s.lit(b",\"kind\":")?;
    let what = match s.string()? {
        b"mmap_lock_start" => {
            let (mm, write) = s.mm_write()?;
            What::MmapLockStart { mm, write, vma_read: s.vma_read()? }
        }
        b"mmap_lock_acquired" => {
            let (mm, write) = s.mm_write()?;
            s.lit(b",\"success\":")?;
            let success = s.bool()?;
            let vma_read = s.vma_read()?;
            let trylock = s.opt_lit(b",\"trylock\":true");
            What::MmapLockAcquired { mm, write, success, vma_read, trylock }
        }
        b"mmap_lock_released" => {
            let (mm, write) = s.mm_write()?;
            What::MmapLockReleased { mm, write }
        }
        b"task_exit" => What::TaskExit,
        b"lock_acquire" => {
            let (class, lock, write) = s.class_lock_write()?;
            let trylock = s.opt_lit(b",\"trylock\":true");
            s.lit(b",\"success\":")?;
            let success = s.bool()?;
            What::LockAcquire { class, lock, write, trylock, success, vma_read: s.vma_read()? }
        }
        b"lock_release" => {
            let (class, lock, write) = s.class_lock_write()?;
            What::LockRelease { class, lock, write }
        }
        b"missed" => {
            s.lit(b",\"count\":")?;
            let count = s.uint()?;
            s.lit(b",\"span\":")?;
            What::Missed { count, span: s.uint()? }
        }
        _ => return None,
    };
    s.lit(b"}")?;
    if s.i != line.len() {
        return None;
    }
    Some(Event {
        ts_ns,
        cpu,
        tid,
        tgid,
        comm,
        task_new,
        ts_coarse,
        lost_before,
        loss_epoch,
        stack,
        what,
    })
}

/// A cursor over one line.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn byte(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// The exact bytes `want`.
    fn lit(&mut self, want: &[u8]) -> Option<()> {
        self.opt_lit(want).then_some(())
    }

    /// Skips `want` if the line goes on with it.
    fn opt_lit(&mut self, want: &[u8]) -> bool {
        // A byte loop: these literals are a few bytes, shorter than a call to memcmp.
        let rest = &self.b[self.i..];
        let here = rest.len() >= want.len() && want.iter().zip(rest).all(|(a, b)| a == b);
        if here {
            self.i += want.len();
        }
        here
    }

    /// A string without escapes or control characters (serde would unescape or reject those).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.byte(b'"')?;
        let start = self.i;
        let len = self.b[start..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        self.i = start + len;
        self.byte(b'"')?;
        Some(&self.b[start..start + len])
    }

    /// An unsigned integer as serde_json accepts it: digits, no sign, no leading zero, no
    /// fraction or exponent, no overflow.
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let len = self.b[start..].iter().position(|c| !c.is_ascii_digit()).unwrap_or(self.b.len() - start);
        let digits = &self.b[start..start + len];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.b.get(start + len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.i = start + len;
        let mut v: u64 = 0;
        if digits.len() < 20 {
            // Up to 19 digits cannot overflow a u64.
            for &d in digits {
                v = v * 10 + u64::from(d - b'0');
            }
        } else {
            for &d in digits {
                v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
        }
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint()?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        if self.opt_lit(b"true") {
            Some(true)
        } else if self.opt_lit(b"false") {
            Some(false)
        } else {
            None
        }
    }

    /// A kernel pointer as `event::hex` writes it: `"0x"` and 1–16 hex digits.
    fn hex(&mut self) -> Option<u64> {
        let s = self.string()?;
        let digits = s.strip_prefix(b"0x")?;
        if digits.is_empty() || digits.len() > 16 {
            return None;
        }
        let mut v = 0u64;
        for &d in digits {
            let nibble = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return None,
            };
            v = (v << 4) | u64::from(nibble);
        }
        Some(v)
    }

    /// `,"mm":…,"write":…`, the first fields of every mmap_lock kind.
    fn mm_write(&mut self) -> Option<(u64, bool)> {
        self.lit(b",\"mm\":")?;
        let mm = self.hex()?;
        self.lit(b",\"write\":")?;
        Some((mm, self.bool()?))
    }

    /// The optional `,"vma_read":…`; `None` (the outer one) for a malformed one.
    fn vma_read(&mut self) -> Option<Option<u64>> {
        if self.opt_lit(b",\"vma_read\":") { Some(Some(self.hex()?)) } else { Some(None) }
    }

    /// `,"class":…,"lock":…,"write":…`, the first fields of both rwsem kinds.
    fn class_lock_write(&mut self) -> Option<(LockClass, u64, bool)> {
        self.lit(b",\"class\":")?;
        let class = match self.string()? {
            b"i_rwsem" => LockClass::IRwsem,
            b"mmap_lock" => LockClass::MmapLock,
            b"vma_lock" => LockClass::VmaLock,
            b"i_mmap_rwsem" => LockClass::IMmapRwsem,
            b"anon_vma" => LockClass::AnonVma,
            _ => return None,
        };
        self.lit(b",\"lock\":")?;
        let lock = self.hex()?;
        self.lit(b",\"write\":")?;
        Some((class, lock, self.bool()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Line;

    fn ev(what: What) -> Event {
        Event {
            ts_ns: 45_611_638_035_317,
            cpu: 1,
            tid: 5035,
            tgid: 5000,
            comm: "vmalock-bench".into(),
            task_new: false,
            ts_coarse: false,
            lost_before: 0,
            loss_epoch: 0,
            stack: None,
            what,
        }
    }

    /// One event of every fast kind, with optional fields both present and absent.
    fn fast_events() -> Vec<Event> {
        let mm = 0xffff_8881_890b_7080;
        let mut v = vec![
            ev(What::MmapLockStart { mm, write: true, vma_read: None }),
            ev(What::MmapLockStart { mm, write: false, vma_read: Some(0xffff_8880_0000_0010) }),
            ev(What::MmapLockAcquired { mm, write: true, success: true, vma_read: None, trylock: false }),
            ev(What::MmapLockAcquired { mm, write: false, success: false, vma_read: Some(1), trylock: true }),
            ev(What::MmapLockReleased { mm, write: false }),
            ev(What::TaskExit),
            ev(What::LockAcquire {
                class: LockClass::AnonVma,
                lock: u64::MAX,
                write: true,
                trylock: true,
                success: false,
                vma_read: Some(0xffff_0000_0000_0000),
            }),
            ev(What::LockAcquire {
                class: LockClass::IMmapRwsem,
                lock: 0,
                write: false,
                trylock: false,
                success: true,
                vma_read: None,
            }),
            ev(What::LockRelease { class: LockClass::IRwsem, lock: 0x1234, write: true }),
            ev(What::Missed { count: 3, span: 0 }),
            ev(What::Missed { count: u64::MAX, span: 17 }),
        ];
        let mut odd = ev(What::MmapLockReleased { mm, write: true });
        odd.task_new = true;
        odd.lost_before = u32::MAX;
        odd.loss_epoch = 9;
        odd.stack = Some(0);
        odd.ts_ns = 0;
        odd.comm = "kworker/u8:ü".into();
        v.push(odd);
        let mut kept = ev(What::MmapLockAcquired { mm, write: true, success: true, vma_read: None, trylock: false });
        kept.ts_coarse = true;
        kept.task_new = true;
        v.push(kept);
        v
    }

    fn written(e: &Event) -> Vec<u8> {
        let mut w = crate::trace::TraceWriter::new(Vec::new(), &Default::default()).unwrap();
        w.event(e).unwrap();
        let out = w.finish(Default::default()).unwrap();
        let lines: Vec<&[u8]> = out.split(|&c| c == b'\n').collect();
        lines[1].to_vec()
    }

    fn serde_event(line: &[u8]) -> Result<Event, String> {
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::Event(e)) => Ok(e),
            Ok(other) => Err(format!("not an event: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn writer_lines_of_fast_kinds_take_the_fast_path() {
        for e in fast_events() {
            let line = written(&e);
            assert_eq!(event(&line).as_ref(), Some(&e), "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn other_kinds_and_odd_forms_are_left_to_serde() {
        let mm = r#""mm":"0x10","write":true"#;
        let base = r#"{"type":"event","ts_ns":1,"cpu":0,"tid":2,"tgid":2,"comm":"a","#;
        for line in [
            // another kind
            format!(r#"{base}"kind":"vma_write_lock","mm":"0x1","vma":"0x2","facts":[]}}"#),
            // escapes, whitespace, null, a repeated key, an unknown key, a field of another kind
            r#"{"type":"event","ts_ns":1,"cpu":0,"tid":2,"tgid":2,"comm":"a\"b","kind":"task_exit"}"#.to_string(),
            format!(r#"{base} "kind":"task_exit"}}"#),
            format!(r#"{base}"stack":null,"kind":"task_exit"}}"#),
            format!(r#"{base}"kind":"task_exit","kind":"task_exit"}}"#),
            format!(r#"{base}"kind":"task_exit","extra":1}}"#),
            format!(r#"{base}"kind":"mmap_lock_released",{mm},"success":true}}"#),
            // another field order
            format!(r#"{base}"kind":"mmap_lock_released","write":true,"mm":"0x10"}}"#),
            r#"{"ts_ns":1,"type":"event","cpu":0,"tid":2,"tgid":2,"comm":"a","kind":"task_exit"}"#.to_string(),
            // numbers serde reads differently or rejects
            format!(r#"{base}"kind":"missed","count":01}}"#),
            format!(r#"{base}"kind":"missed","count":1.0}}"#),
            format!(r#"{base}"kind":"missed","count":-1}}"#),
            format!(r#"{base}"kind":"missed","count":18446744073709551616}}"#),
            r#"{"type":"event","ts_ns":1,"cpu":4294967296,"tid":2,"tgid":2,"comm":"a","kind":"task_exit"}"#.to_string(),
            // pointers serde reads its own way
            format!(r#"{base}"kind":"mmap_lock_released","mm":"0X10","write":true}}"#),
            format!(r#"{base}"kind":"mmap_lock_released","mm":"0x","write":true}}"#),
            format!(r#"{base}"kind":"mmap_lock_released","mm":"0x+1","write":true}}"#),
            // missing fields, wrong type, trailing bytes, cut short
            format!(r#"{base}"kind":"mmap_lock_released","write":true}}"#),
            r#"{"type":"footer","ts_ns":1,"cpu":0,"tid":2,"tgid":2,"comm":"a","kind":"task_exit"}"#.to_string(),
            format!(r#"{base}"kind":"task_exit"}} "#),
            format!(r#"{base}"kind":"mmap_lock_released",{mm}"#),
        ] {
            assert_eq!(event(line.as_bytes()), None, "{line}");
        }
    }

    /// Whatever the fast path accepts, serde reads the same way: checked over every cut and
    /// every one-byte change of each fast kind's line.
    #[test]
    fn fast_path_agrees_with_serde() {
        let mut accepted = 0;
        for e in fast_events() {
            let line = written(&e);
            let mut variants = vec![line.clone()];
            for i in 0..line.len() {
                variants.push(line[..i].to_vec());
                for c in [b'0', b'9', b'"', b',', b'}', b' ', b'x', b'\\', b'-', b'f'] {
                    let mut v = line.clone();
                    v[i] = c;
                    variants.push(v);
                }
            }
            for v in variants {
                if let Some(fast) = event(&v) {
                    accepted += 1;
                    assert_eq!(
                        serde_event(&v).as_ref(),
                        Ok(&fast),
                        "fast path and serde disagree on {}",
                        String::from_utf8_lossy(&v)
                    );
                }
            }
        }
        // The mutations that keep a line valid (a digit changed, say) must still be fast.
        assert!(accepted > 200, "only {accepted} lines took the fast path");
    }
}
