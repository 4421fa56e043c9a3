//! A set of named bits (a VMA event's changed fields, vma_prepare's unlocked roles), held as the
//! bits and written as the list of names: decoding such an event allocates nothing.

use std::fmt;

use serde::{Deserializer, Serialize, Serializer, de};

/// Bit → name, in the order names are written.
pub type Table = &'static [(u64, &'static str)];

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NameSet {
    bits: u64,
    table: Table,
}

impl NameSet {
    /// The bits of `bits` that `table` names (others are dropped).
    pub fn from_bits(bits: u64, table: Table) -> NameSet {
        let known = table.iter().fold(0, |m, (b, _)| m | b);
        NameSet { bits: bits & known, table }
    }

    /// The set of `names`, or the first name `table` does not have.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>, table: Table) -> Result<NameSet, String> {
        let mut bits = 0;
        for n in names {
            match table.iter().find(|(_, t)| *t == n) {
                Some((b, _)) => bits |= b,
                None => return Err(format!("unknown name {n:?} (known: {})", table.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(", "))),
            }
        }
        Ok(NameSet { bits, table })
    }

    pub fn empty(table: Table) -> NameSet {
        NameSet { bits: 0, table }
    }

    pub fn bits(&self) -> u64 {
        self.bits
    }

    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    pub fn has(&self, name: &str) -> bool {
        self.table.iter().any(|(b, n)| *n == name && self.bits & b != 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static str> + use<> {
        let bits = self.bits;
        self.table.iter().filter(move |(b, _)| bits & b != 0).map(|(_, n)| *n)
    }

    pub fn join(&self, sep: &str) -> String {
        self.iter().collect::<Vec<_>>().join(sep)
    }

    pub fn len(&self) -> usize {
        self.bits.count_ones() as usize
    }
}

impl fmt::Debug for NameSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for NameSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Reads a list of names of `table` (serde `deserialize_with` helpers name their table).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D, table: Table) -> Result<NameSet, D::Error> {
    struct V(Table);
    impl<'de> de::Visitor<'de> for V {
        type Value = NameSet;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of names")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<NameSet, A::Error> {
            let mut set = NameSet::empty(self.0);
            while let Some(n) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                let one = NameSet::from_names([n.as_ref()], self.0).map_err(de::Error::custom)?;
                set.bits |= one.bits;
            }
            Ok(set)
        }
    }
    d.deserialize_seq(V(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = &[(1, "a"), (4, "c"), (2, "b")];

    #[test]
    fn names_follow_the_table_order_and_round_trip() {
        let s = NameSet::from_bits(1 | 2 | 4 | 8, T);
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a", "c", "b"], "bit 8 is not in the table");
        assert_eq!(s.bits(), 7);
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"["a","c","b"]"#);
        let mut de = serde_json::Deserializer::from_str(r#"["b","a"]"#);
        let back = deserialize(&mut de, T).unwrap();
        assert_eq!(back, NameSet::from_bits(3, T));
        assert!(back.has("b") && !back.has("c") && !back.has("z"));
        assert_eq!(back.join(", "), "a, b");
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let mut de = serde_json::Deserializer::from_str(r#"["a","zz"]"#);
        let err = deserialize(&mut de, T).unwrap_err().to_string();
        assert!(err.contains("unknown name \"zz\"") && err.contains("known: a, c, b"), "{err}");
    }
}
