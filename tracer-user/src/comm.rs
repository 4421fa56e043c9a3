//! A task's comm, held inline: decoding an event, and copying it into the model's per-task
//! state, allocates nothing (a `String` per event was one allocation at decode and one more at
//! every clone the model keeps).

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Room for a kernel comm (15 bytes and a NUL) decoded lossily: each invalid byte becomes
/// U+FFFD, three bytes, so 15 of them take 45.
const CAP: usize = 47;

/// Valid UTF-8 of at most [`CAP`] bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm {
    len: u8,
    buf: [u8; CAP],
}

impl Default for Comm {
    fn default() -> Comm {
        Comm { len: 0, buf: [0; CAP] }
    }
}

impl Comm {
    /// The kernel's NUL-padded `task->comm`, as UTF-8 (invalid bytes become U+FFFD).
    pub fn from_kernel(raw: &[u8]) -> Comm {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let mut c = Comm::default();
        for chunk in raw[..end].utf8_chunks() {
            c.push(chunk.valid());
            if !chunk.invalid().is_empty() {
                c.push(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
            }
        }
        c
    }

    /// `s`, or None when it is longer than a comm can be.
    pub fn new(s: &str) -> Option<Comm> {
        if s.len() > CAP {
            return None;
        }
        let mut c = Comm::default();
        c.push(s);
        Some(c)
    }

    /// Appends what fits, whole characters only.
    fn push(&mut self, s: &str) {
        let at = usize::from(self.len);
        let mut n = s.len().min(CAP - at);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n as u8;
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `buf[..len]` only ever receives whole characters of valid `str`s (`push`).
        unsafe { std::str::from_utf8_unchecked(&self.buf[..usize::from(self.len)]) }
    }
}

impl Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Longer than a comm can be: cut at a character boundary (names a test or a user typed).
impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        let mut c = Comm::default();
        c.push(s);
        c
    }
}

impl From<String> for Comm {
    fn from(s: String) -> Comm {
        Comm::from(s.as_str())
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// From a trace: a longer string is malformed input, not a name to cut.
impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Comm, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Comm::new(&s).ok_or_else(|| serde::de::Error::custom(format!("comm of {} bytes: a task's comm is at most {CAP}", s.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_comm_stops_at_its_nul_and_keeps_utf8() {
        let mut raw = [0u8; 16];
        raw[..12].copy_from_slice(&"kworker/u8:ü".as_bytes()[..12]);
        assert_eq!(Comm::from_kernel(&raw).as_str(), "kworker/u8:\u{FFFD}", "a character cut by the kernel's 15 bytes");
        let full = *b"0123456789abcdef";
        assert_eq!(Comm::from_kernel(&full).as_str(), "0123456789abcdef", "no NUL: all of it");
    }

    #[test]
    fn fifteen_invalid_bytes_fit_as_replacement_characters() {
        let mut raw = [0xffu8; 16];
        raw[15] = 0;
        let c = Comm::from_kernel(&raw);
        assert_eq!(c.as_str(), "\u{FFFD}".repeat(15));
        assert_eq!(c.len(), 45);
    }

    #[test]
    fn a_trace_comm_longer_than_a_comm_is_an_error_naming_it() {
        let ok: Comm = serde_json::from_str("\"mix\"").unwrap();
        assert_eq!(ok, "mix");
        let long = format!("\"{}\"", "x".repeat(48));
        let err = serde_json::from_str::<Comm>(&long).unwrap_err().to_string();
        assert!(err.contains("comm of 48 bytes"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"mix\"");
    }

    #[test]
    fn from_str_cuts_at_a_character_boundary() {
        let s = format!("{}ü", "a".repeat(46));
        let c = Comm::from(s.as_str());
        assert_eq!(c.as_str(), "a".repeat(46));
    }
}
