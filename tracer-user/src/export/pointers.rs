//! Pointer scrubbing for shared traces: kernel (and user) addresses become stable per-trace
//! pseudonyms, so an export shows which events touch the same mm or VMA without revealing where
//! KASLR put the kernel.
//!
//! A pseudonym is the order of first appearance (`0x1`, `0x2`, ...), not a hash of the address:
//! any hash keyed by something in the trace could be reversed by hashing the few bits of KASLR
//! entropy, while a counter carries no information about the address at all. Being numbers, the
//! pseudonyms keep a scrubbed trace replayable: the model only compares addresses for equality.

use std::collections::HashMap;

/// Fields of a serialized event that hold addresses (see `crate::event::What`).
pub const POINTER_FIELDS: &[&str] = &["mm", "vma", "vm_start", "first_unlocked", "vma_read"];

/// Hex fields that are values, not addresses: kept as they are.
const VALUE_FIELDS: &[&str] = &["flags_before", "flags_after", "flags_changed"];

/// Kernel addresses on x86-64 and arm64 live in the upper half: anything found in free text at
/// or above this is scrubbed even when no pointer field named it first.
const KERNEL_HALF: u64 = 0xffff_0000_0000_0000;

#[derive(Debug, Default)]
pub struct Pseudonyms {
    /// `None` with `--raw-pointers`: everything passes through.
    map: Option<HashMap<u64, u64>>,
}

impl Pseudonyms {
    pub fn new(raw: bool) -> Self {
        Pseudonyms { map: (!raw).then(HashMap::new) }
    }

    pub fn is_raw(&self) -> bool {
        self.map.is_none()
    }

    /// The pseudonym of `addr` (0, "no pointer", stays 0).
    pub fn of(&mut self, addr: u64) -> u64 {
        match self.map.as_mut() {
            None => addr,
            Some(_) if addr == 0 => 0,
            Some(m) => {
                let next = m.len() as u64 + 1;
                *m.entry(addr).or_insert(next)
            }
        }
    }

    /// Replaces every hex literal in `s` that is a known address or looks like a kernel one.
    pub fn scrub_text(&mut self, s: &str) -> String {
        if self.map.is_none() || !s.contains("0x") {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("0x") {
            out.push_str(&rest[..i]);
            let digits = rest[i + 2..].bytes().take_while(u8::is_ascii_hexdigit).count();
            let lit = &rest[i..i + 2 + digits];
            match u64::from_str_radix(&lit[2..], 16) {
                Ok(v) if v != 0 && (v >= KERNEL_HALF || self.known(v)) => out.push_str(&format!("{:#x}", self.of(v))),
                _ => out.push_str(lit),
            }
            rest = &rest[i + 2 + digits..];
        }
        out.push_str(rest);
        out
    }

    fn known(&self, v: u64) -> bool {
        self.map.as_ref().is_some_and(|m| m.contains_key(&v))
    }

    /// Scrubs a serialized event or verdict in place: pointer fields by name, text everywhere.
    pub fn scrub_json(&mut self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Object(o) => {
                for (k, val) in o.iter_mut() {
                    if POINTER_FIELDS.contains(&k.as_str())
                        && let Some(addr) = val.as_str().and_then(parse_hex)
                    {
                        *val = Value::String(format!("{:#x}", self.of(addr)));
                    } else if !VALUE_FIELDS.contains(&k.as_str()) {
                        self.scrub_json(val);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.scrub_json(x)),
            Value::String(s) => *s = self.scrub_text(s),
            _ => {}
        }
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MM: u64 = 0xffff_8880_1234_5000;
    const VMA: u64 = 0xffff_8880_dead_b000;

    #[test]
    fn same_address_same_pseudonym_and_none_leaks() {
        let mut p = Pseudonyms::new(false);
        let a = p.of(MM);
        let b = p.of(VMA);
        assert_ne!(a, b);
        assert_eq!(p.of(MM), a, "stable within the trace");
        assert_eq!(p.of(0), 0);
        let text = p.scrub_text(&format!("VMA {VMA:#x} at 0x7f0000001000 of mm {MM:#x}, flags 0x8100073"));
        assert_eq!(text, format!("VMA {b:#x} at 0x7f0000001000 of mm {a:#x}, flags 0x8100073"));
        // A user address named by a pointer field first is scrubbed in text too.
        let start = p.of(0x7f00_0000_1000);
        assert_eq!(p.scrub_text("at 0x7f0000001000."), format!("at {start:#x}."));
        // Stack frames that stayed addresses.
        assert_eq!(p.scrub_text("0xffffffff81234567"), "0x4");
    }

    #[test]
    fn json_pointer_fields_and_nested_text_are_scrubbed() {
        let mut p = Pseudonyms::new(false);
        let mut v = serde_json::json!({
            "mm": format!("{MM:#x}"),
            "flags_after": "0xffffffffffffffff",
            "what": format!("VMA {VMA:#x}"),
            "events": [{"vma": format!("{VMA:#x}"), "tid": 7}],
        });
        p.scrub_json(&mut v);
        let s = v.to_string();
        assert!(!s.contains("ffff888"), "{s}");
        assert!(!s.contains("dead"), "{s}");
        // Numbered in the order the walk meets them; the same address always gets the same one.
        let vma = v["events"][0]["vma"].as_str().unwrap().to_string();
        assert_ne!(v["mm"], v["events"][0]["vma"]);
        assert!(v["mm"] == "0x1" || v["mm"] == "0x2", "{v}");
        assert_eq!(v["what"], format!("VMA {vma}"));
        assert_eq!(v["events"][0]["tid"], 7);
        assert_eq!(v["flags_after"], "0xffffffffffffffff", "flags are values, not pointers");
    }

    #[test]
    fn raw_pointers_pass_through() {
        let mut p = Pseudonyms::new(true);
        assert_eq!(p.of(MM), MM);
        let s = format!("mm {MM:#x}");
        assert_eq!(p.scrub_text(&s), s);
    }
}
