//! Plain tracepoint record layouts, read from tracefs `format` files. The record changes between
//! kernels (memcg_path became memcg_id around 6.14), so the fallback programs are told which
//! known layout this kernel has, and are not attached when it has neither.

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use tracer_common::tp_layout;

/// Where tracefs is mounted; mounts it at /sys/kernel/tracing if it is not (we are root).
pub fn tracefs() -> Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({}); \
             mount it with `mount -t tracefs nodev /sys/kernel/tracing`",
            std::io::Error::last_os_error()
        );
    }
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// (name, offset, size) of each field in a `format` file.
pub fn parse_fields(format: &str) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            } else if name.is_none() && !part.is_empty() && !part.starts_with("signed:") {
                // "struct mm_struct * mm" / "__data_loc char[] memcg_path": the name is last.
                name = part.rsplit(|c: char| c.is_whitespace() || c == '*').next().map(str::to_string);
            }
        }
        if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
            out.push((n, o, s));
        }
    }
    out
}

/// Which `tp_layout` the mmap_lock records of this kernel have, from the acquire_returned record
/// (the widest of the three). Errors say what was found when it matches no known layout.
pub fn mmap_lock_layout(tracefs: &Path) -> Result<u32> {
    let path = tracefs.join("events/mmap_lock/mmap_lock_acquire_returned/format");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    layout_of(&parse_fields(&text)).with_context(|| format!("{} has an unknown record layout", path.display()))
}

pub fn layout_of(fields: &[(String, u32, u32)]) -> Result<u32> {
    let off = |n: &str| fields.iter().find(|f| f.0 == n).map(|f| f.1);
    match (off("mm"), off("write"), off("success")) {
        (Some(8), Some(24), Some(25)) => Ok(tp_layout::MEMCG_ID),
        (Some(8), Some(20), Some(21)) => Ok(tp_layout::MEMCG_PATH),
        (mm, w, s) => bail!("mm@{mm:?} write@{w:?} success@{s:?}, known layouts are mm@8 write@24 success@25 and mm@8 write@20 success@21"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6_18: &str = "name: mmap_lock_acquire_returned\nID: 678\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:u64 memcg_id;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:bool write;\toffset:24;\tsize:1;\tsigned:0;\n\tfield:bool success;\toffset:25;\tsize:1;\tsigned:0;\n";
    const V6_12: &str = "format:\n\tfield:struct mm_struct * mm;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__data_loc char[] memcg_path;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:bool write;\toffset:20;\tsize:1;\tsigned:0;\n\tfield:bool success;\toffset:21;\tsize:1;\tsigned:0;\n";

    #[test]
    fn parses_both_known_layouts() {
        let f = parse_fields(V6_18);
        assert!(f.contains(&("mm".into(), 8, 8)));
        assert!(f.contains(&("memcg_id".into(), 16, 8)));
        assert_eq!(layout_of(&f).unwrap(), tp_layout::MEMCG_ID);
        let f = parse_fields(V6_12);
        assert!(f.contains(&("memcg_path".into(), 16, 4)));
        assert_eq!(layout_of(&f).unwrap(), tp_layout::MEMCG_PATH);
    }

    #[test]
    fn unknown_layout_is_an_error_that_says_what_it_saw() {
        let f = vec![("mm".to_string(), 8, 8), ("write".to_string(), 32, 1)];
        let e = layout_of(&f).unwrap_err().to_string();
        assert!(e.contains("write@Some(32)"), "{e}");
    }
}
