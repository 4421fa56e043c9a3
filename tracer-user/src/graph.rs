//! `--graph FILE`: the lock-order graph written as JSON or as Graphviz DOT, chosen by the
//! file's extension.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::model::Graph;

fn format_of(path: &Path) -> Result<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok("json"),
        Some("dot") => Ok("dot"),
        _ => bail!("--graph {}: unknown format; name the file *.json (JSON) or *.dot (Graphviz)", path.display()),
    }
}

/// Checks a `--graph` path before tracing, so a typo is not found only at the end.
pub fn check_path(path: &Path) -> Result<()> {
    format_of(path).map(drop)
}

/// Writes `g` to `path`.
pub fn write(path: &Path, g: &Graph) -> Result<()> {
    let text = match format_of(path)? {
        "json" => serde_json::to_string_pretty(g)? + "\n",
        _ => g.to_dot(),
    };
    std::fs::write(path, text).with_context(|| format!("writing the lock-order graph to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, LockClass, What};
    use crate::model::Model;

    fn graph() -> Graph {
        let mut m = Model::new();
        let mut out = Vec::new();
        let ev = |tid, what| Event { ts_ns: 1, cpu: 0, tid, tgid: tid, comm: "w".into(), task_new: true, ts_coarse: false, lost_before: 0, loss_epoch: 0, stack: None, what };
        let (mm, map) = (0xffff_8880_0000_a000, 0xffff_8880_1111_0000);
        for (tid, first_mmap) in [(1, true), (2, false)] {
            let take_mmap = [
                ev(tid, What::MmapLockStart { mm, write: false, vma_read: None }),
                ev(tid, What::MmapLockAcquired { mm, write: false, success: true, vma_read: None, trylock: false }),
            ];
            let take_map = [ev(tid, What::LockAcquire { class: LockClass::IMmapRwsem, lock: map, write: true, trylock: false, success: true, vma_read: None })];
            let order: Vec<&Event> = if first_mmap { take_mmap.iter().chain(&take_map).collect() } else { take_map.iter().chain(&take_mmap).collect() };
            for e in order {
                m.apply(e, &mut out);
            }
            m.apply(&ev(tid, What::TaskExit), &mut out);
        }
        m.lock_graph()
    }

    #[test]
    fn writes_json_and_dot_by_extension_and_refuses_others() {
        let dir = std::env::temp_dir().join(format!("vmalock-graph-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = graph();
        assert_eq!(g.cycles.len(), 1);
        write(&dir.join("g.json"), &g).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("g.json")).unwrap()).unwrap();
        assert_eq!(json["nodes"], serde_json::json!(["mmap_lock", "i_mmap_rwsem"]));
        assert_eq!(json["edges"].as_array().unwrap().len(), 2);
        assert_eq!(json["cycles"][0]["reported_as"], "lock-order");
        write(&dir.join("g.dot"), &g).unwrap();
        let dot = std::fs::read_to_string(dir.join("g.dot")).unwrap();
        assert!(dot.starts_with("digraph lock_order {"), "{dot}");
        assert!(dot.contains("\"i_mmap_rwsem\" -> \"mmap_lock\" [label=\"EN w\", color=red, style=bold];"), "{dot}");
        let err = write(&dir.join("g.txt"), &g).unwrap_err().to_string();
        assert!(err.contains("*.json") && err.contains("*.dot"), "{err}");
        assert!(check_path(&dir.join("g")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
