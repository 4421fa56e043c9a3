//! Kernel stack addresses (from `bpf_get_stackid` and a stack-trace map) as
//! `function+0xoff [module]`, from /proc/kallsyms. Plain std: a sorted table and a binary search
//! are all this needs, and a verdict only carries a few dozen frames.

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::fmt;

pub const KALLSYMS: &str = "/proc/kallsyms";
/// Module load addresses and sizes; absent on a kernel without loadable modules.
pub const PROC_MODULES: &str = "/proc/modules";

/// Marks a vmlinux symbol in [`Sym::module`].
const VMLINUX: u16 = u16::MAX;

/// One resolved stack frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub addr: u64,
    pub name: String,
    pub offset: u64,
    /// `None` for vmlinux.
    pub module: Option<String>,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.name, self.offset)?;
        if let Some(m) = &self.module {
            write!(f, " [{m}]")?;
        }
        Ok(())
    }
}

/// 16 bytes per symbol; the names live in one arena, so ~120k–200k symbols cost a few MB.
#[derive(Clone, Copy)]
struct Sym {
    addr: u64,
    name_start: u32,
    name_len: u16,
    module: u16,
}

/// The kernel's text symbols, sorted by address.
pub struct Kallsyms {
    syms: Vec<Sym>,
    names: String,
    modules: Vec<Box<str>>,
    /// Per module: one past the end of its memory, from /proc/modules, when known. Without it a
    /// module's last function has no known end, so addresses past its start resolve to nothing.
    module_ends: Vec<Option<u64>>,
    /// Lines whose address read as 0 (all of them when the kernel hides addresses from us).
    zero_addrs: usize,
}

impl Kallsyms {
    /// Reads /proc/kallsyms (and /proc/modules for module extents), or says why the addresses
    /// cannot be had.
    pub fn load() -> Result<Self> {
        let text = std::fs::read_to_string(KALLSYMS).with_context(|| format!("reading {KALLSYMS}"))?;
        let mut k = Self::parse(&text).usable()?;
        // Only sharpens module lookups; a kernel without modules has no such file.
        if let Ok(modules) = std::fs::read_to_string(PROC_MODULES) {
            k.set_module_extents(&modules);
        }
        Ok(k)
    }

    /// Parses kallsyms text (`addr type name` or `addr type name\t[module]` per line). Keeps only
    /// text symbols (t/T/w/W) with a non-zero address; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut k = Kallsyms { syms: Vec::new(), names: String::new(), modules: Vec::new(), module_ends: Vec::new(), zero_addrs: 0 };
        let mut module_index = std::collections::HashMap::<&str, u16>::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            if addr == 0 {
                k.zero_addrs += 1;
                continue;
            }
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let module = match parts.next().and_then(|m| m.strip_prefix('[')?.strip_suffix(']')) {
                None => VMLINUX,
                Some(m) => match module_index.get(m) {
                    Some(&i) => i,
                    None => {
                        // u16::MAX is VMLINUX; no kernel has anywhere near 65k modules.
                        let Ok(i) = u16::try_from(k.modules.len()) else { continue };
                        if i == VMLINUX {
                            continue;
                        }
                        module_index.insert(m, i);
                        k.modules.push(m.into());
                        i
                    }
                },
            };
            // KSYM_NAME_LEN is 512, so a u16 length always fits; the arena stays under 4 GiB.
            let (Ok(name_start), Ok(name_len)) = (u32::try_from(k.names.len()), u16::try_from(name.len())) else { continue };
            k.names.push_str(name);
            k.syms.push(Sym { addr, name_start, name_len, module });
        }
        // Stable, so aliases at one address keep file order and resolve() picks the last listed.
        k.syms.sort_by_key(|s| s.addr);
        k.module_ends = vec![None; k.modules.len()];
        k.names.shrink_to_fit();
        k.syms.shrink_to_fit();
        k
    }

    /// Errors when nothing usable was parsed, saying why. All-zero addresses mean the kernel
    /// hides them: kallsyms_show_value() shows them to CAP_SYSLOG when kptr_restrict ≤ 1, and to
    /// anyone only when kptr_restrict is 0 and perf_event_paranoid ≤ 1.
    fn usable(self) -> Result<Self> {
        if self.syms.is_empty() {
            if self.zero_addrs > 0 {
                bail!(
                    "{KALLSYMS} lists every address as 0: the kernel hides symbol addresses from this \
                     process, so kernel stacks cannot be symbolized. Run vmalock as root, and if it \
                     already is, `sysctl kernel.kptr_restrict=0` (2 hides them even from root); a \
                     non-root user also needs `sysctl kernel.perf_event_paranoid=1`."
                );
            }
            bail!("{KALLSYMS} has no text symbols (t/T/w/W lines); kernel stacks cannot be symbolized");
        }
        Ok(self)
    }

    /// Records where each module's memory ends, from /proc/modules lines
    /// (`name size refcount deps state address`), so a module's last function resolves too.
    fn set_module_extents(&mut self, proc_modules: &str) {
        for line in proc_modules.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(name), Some(size), Some(base)) = (f.first(), f.get(1), f.get(5)) else { continue };
            let (Ok(size), Ok(base)) = (size.parse::<u64>(), u64::from_str_radix(base.trim_start_matches("0x"), 16)) else { continue };
            if base == 0 {
                continue;
            }
            if let Some(i) = self.modules.iter().position(|m| **m == **name) {
                self.module_ends[i] = base.checked_add(size);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The text symbol containing `addr`. Symbols have no sizes in kallsyms, so a symbol is taken
    /// to run up to the next one of its region (vmlinux or one module); past the last one of a
    /// region (unless /proc/modules gave the module's end) and below the first, there is none.
    pub fn resolve(&self, addr: u64) -> Option<Frame> {
        if addr == 0 {
            return None;
        }
        let i = self.syms.partition_point(|s| s.addr <= addr);
        let sym = *self.syms.get(i.checked_sub(1)?)?;
        let last_of_region = self.syms.get(i).is_none_or(|next| next.module != sym.module);
        if sym.addr != addr && last_of_region {
            let end = self.module_ends.get(usize::from(sym.module)).copied().flatten();
            if end.is_none_or(|end| addr >= end) {
                return None;
            }
        }
        let start = sym.name_start as usize;
        Some(Frame {
            addr,
            name: self.names[start..start + usize::from(sym.name_len)].to_string(),
            offset: addr - sym.addr,
            module: (sym.module != VMLINUX).then(|| self.modules[usize::from(sym.module)].to_string()),
        })
    }

    /// One line per non-zero address (a stack-trace map entry is zero-padded after its last
    /// frame); unresolvable ones as `0x…`. Frames after the first are return addresses, which
    /// point just past their call: a call that ends its function shows as the next symbol+0x0.
    pub fn symbolize(&self, addrs: &[u64]) -> Vec<String> {
        addrs
            .iter()
            .filter(|&&a| a != 0)
            .map(|&a| match self.resolve(a) {
                Some(frame) => frame.to_string(),
                None => format!("{a:#x}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unsorted on purpose, as the real file is (modules follow vmlinux in load order).
    const FIXTURE: &str = "\
ffffffffc0a01000 t vt_helper\t[vmalock_test]
ffffffffc0a01010 t vt_vma_write_under_mmap_read\t[vmalock_test]
ffffffffc0a01100 T vt_last\t[vmalock_test]
ffffffffc0a02000 d vt_data\t[vmalock_test]
ffffffff81000000 T _stext
ffffffff81001000 T __vma_start_write
ffffffff81001080 t vma_helper
ffffffff81001100 W weak_fn
ffffffff81001200 D some_data
ffffffff81001300 r some_rodata
ffffffff81002000 T _etext
0000000000000000 A fixed_percpu_data
ffffffffc0b00000 t other_fn\t[other_mod]
ffffffffc0b00100 t other_last\t[other_mod]
";

    fn k() -> Kallsyms {
        Kallsyms::parse(FIXTURE)
    }

    #[test]
    fn exact_hit_and_offset_inside() {
        let f = k().resolve(0xffffffff81001000).unwrap();
        assert_eq!((f.name.as_str(), f.offset, f.module.as_deref()), ("__vma_start_write", 0, None));
        let f = k().resolve(0xffffffff81001005).unwrap();
        assert_eq!((f.name.as_str(), f.offset), ("__vma_start_write", 5));
        assert_eq!(f.to_string(), "__vma_start_write+0x5");
    }

    #[test]
    fn module_frames_name_their_module() {
        let f = k().resolve(0xffffffffc0a0102c).unwrap();
        assert_eq!(f.module.as_deref(), Some("vmalock_test"));
        assert_eq!(f.to_string(), "vt_vma_write_under_mmap_read+0x1c [vmalock_test]");
        assert_eq!(k().resolve(0xffffffffc0b00010).unwrap().to_string(), "other_fn+0x10 [other_mod]");
    }

    #[test]
    fn outside_every_region_is_none() {
        let k = k();
        assert_eq!(k.resolve(0xffffffff80ffffff), None, "below the first symbol");
        assert_eq!(k.resolve(0), None);
        // Past the last symbol of vmlinux (_etext), of vmalock_test, and of the whole table.
        assert_eq!(k.resolve(0xffffffff81002010), None);
        assert_eq!(k.resolve(0xffffffffc0a01104), None);
        assert_eq!(k.resolve(0xffffffffc0b00104), None);
        // An exact hit on a region's last symbol still resolves.
        assert_eq!(k.resolve(0xffffffffc0a01100).unwrap().name, "vt_last");
    }

    #[test]
    fn proc_modules_extends_a_modules_last_function() {
        let mut k = k();
        k.set_module_extents("vmalock_test 16384 0 - Live 0xffffffffc0a01000 (O)\nother_mod 4096 0 - Live 0x0000000000000000\n");
        assert_eq!(k.resolve(0xffffffffc0a01104).unwrap().to_string(), "vt_last+0x4 [vmalock_test]");
        assert_eq!(k.resolve(0xffffffffc0a05000), None, "past the module's end");
        assert_eq!(k.resolve(0xffffffffc0b00104), None, "hidden base (0) gives no extent");
    }

    #[test]
    fn only_text_symbols_count() {
        let k = k();
        // 5 text symbols in vmlinux, 3 in vmalock_test, 2 in other_mod.
        assert_eq!(k.len(), 10);
        // some_data and some_rodata are skipped, so these land in weak_fn (W counts).
        assert_eq!(k.resolve(0xffffffff81001204).unwrap().to_string(), "weak_fn+0x104");
        assert_eq!(k.resolve(0xffffffff81001300).unwrap().name, "weak_fn");
        assert_eq!(k.resolve(0xffffffff81001090).unwrap().name, "vma_helper");
    }

    #[test]
    fn zero_addresses_are_ignored() {
        let k = Kallsyms::parse("0000000000000000 T zero_fn\nffffffff81000000 T real_fn\nffffffff81000100 T next_fn\n");
        assert_eq!(k.len(), 2);
        assert_eq!(k.zero_addrs, 1);
        assert_eq!(k.resolve(0xffffffff81000001).unwrap().name, "real_fn");
    }

    #[test]
    fn all_zero_addresses_say_how_to_fix() {
        let hidden = "0000000000000000 T _stext\n0000000000000000 t vt_fn\t[vmalock_test]\n";
        let err = Kallsyms::parse(hidden).usable().err().expect("all-zero kallsyms must be refused").to_string();
        assert!(err.contains("every address as 0"), "{err}");
        assert!(err.contains("root") && err.contains("sysctl kernel.kptr_restrict=0"), "{err}");
        assert!(Kallsyms::parse("").usable().is_err());
        assert!(k().usable().is_ok());
    }

    #[test]
    fn symbolize_skips_padding_and_shows_unknowns_in_hex() {
        let lines = k().symbolize(&[0xffffffffc0a0102c, 0xffffffff81001005, 0x1234, 0, 0]);
        assert_eq!(lines, ["vt_vma_write_under_mmap_read+0x1c [vmalock_test]", "__vma_start_write+0x5", "0x1234"]);
    }

    #[test]
    fn frames_serialize() {
        let f = k().resolve(0xffffffffc0a0102c).unwrap();
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(
            json,
            r#"{"addr":18446744072646299692,"name":"vt_vma_write_under_mmap_read","offset":28,"module":"vmalock_test"}"#
        );
        assert_eq!(serde_json::from_str::<Frame>(&json).unwrap(), f);
    }

    /// Against this machine's kernel: a symbol's own address comes back as its name.
    #[test]
    fn live_kallsyms_resolves_a_known_symbol() {
        let test = "symbols::tests::live_kallsyms_resolves_a_known_symbol";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "needs root to read real addresses from /proc/kallsyms");
            return;
        }
        let k = Kallsyms::load().unwrap();
        let text = std::fs::read_to_string(KALLSYMS).unwrap();
        // Any vmlinux function that has its address to itself; vfs_read exists in every kernel.
        let addr_of = |name: &str| {
            text.lines().find_map(|l| {
                let mut p = l.split_whitespace();
                let (a, t, n) = (p.next()?, p.next()?, p.next()?);
                (n == name && matches!(t, "t" | "T") && p.next().is_none()).then(|| u64::from_str_radix(a, 16).ok())?
            })
        };
        let Some(addr) = addr_of("vfs_read") else {
            skip(test, "this kernel's /proc/kallsyms has no vfs_read");
            return;
        };
        let f = k.resolve(addr).expect("vfs_read's own address resolves");
        assert_eq!((f.name.as_str(), f.offset, f.module), ("vfs_read", 0, None));
        assert_eq!(k.resolve(addr + 1).unwrap().to_string(), "vfs_read+0x1");
    }

    /// As tests/common's skip(): printed, and logged so `cargo xtask test` counts it as skipped.
    fn skip(test: &str, why: &str) {
        use std::io::Write as _;
        eprintln!("SKIPPED {test}: {why}");
        if let Ok(path) = std::env::var("VMALOCK_SKIP_LOG")
            && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}
