//! `cargo xtask test`: every test in the workspace, then one closing tally in which tests that
//! could not run here (not root, no BTF, ...) count as skipped, not passed.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// `kernels`: None = host suite only; Some(names) = also the VM suite (all kernels if empty).
pub fn run(extra: &[String], kernels: Option<&[String]>) -> Result<()> {
    let skip_log = std::env::temp_dir().join(format!("vmalock-skips-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    if !cmd::is_root() {
        println!("xtask: NOT ROOT: the live eBPF tests will be skipped (run as root to run them)");
    }
    let mut c = cmd::cargo();
    // tracer-ebpf only builds for the BPF target; tracer-user's build.rs builds (and so checks) it.
    c.args(["test", "--workspace", "--exclude", "tracer-ebpf"])
        .args(extra)
        .env("VMALOCK_SKIP_LOG", &skip_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = c.spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, "passed");
            failed += count(rest, "failed");
        }
    }
    let status = child.wait()?;
    let skips: Vec<String> = std::fs::read_to_string(&skip_log)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);
    for s in &skips {
        println!("SKIPPED {s}");
    }
    let mut skipped = skips.len() as u64;
    // A skipped test returned early, so cargo counted it as passed.
    let mut passed = passed.saturating_sub(skipped);
    let host_ok = status.success() && failed == 0;
    let mut vm_error = None;
    // The rule table's first column: what `vmalock probe` says on this machine's kernel.
    let mut columns = Vec::new();
    if cmd::is_root() {
        match host_probe() {
            Ok(text) => columns.push((format!("host {}", kernel_release()), crate::rules_table::from_probe(&text))),
            Err(e) => println!("xtask: host probe for the rule table failed: {e:#}"),
        }
    }
    if let Some(names) = kernels {
        // Kernels with a recipe are built here when not cached (each step prints its time).
        match crate::vm::test(names, std::time::Duration::from_secs(crate::vm::SUITE_TIMEOUT_SECS), true) {
            Ok(runs) => {
                let (p, f, s) = crate::vm::tally(&runs);
                println!("vm tests: {p} passed, {f} failed, {s} skipped");
                passed += p;
                failed += f;
                skipped += s;
                for r in &runs {
                    // A kernel that ran the regressions suite: what it found, per item (its
                    // probe column would repeat the unpatched 6.12's).
                    let rules = if r.found.is_empty() { crate::rules_table::from_probe(&r.probe) } else { crate::rules_table::from_found(&r.found) };
                    if !rules.is_empty() {
                        let what = if r.found.is_empty() { "" } else { ": found, per item" };
                        columns.push((format!("{} ({}){what}", r.kernel, r.release), rules));
                    }
                }
            }
            Err(e) => {
                failed += 1;
                vm_error = Some(e);
            }
        }
    }
    if !columns.is_empty() {
        let table = crate::rules_table::render(&columns);
        println!("\nrules × kernels, as `vmalock probe` reported them in this run:\n{table}");
        // The full run (host + every kernel) regenerates the README's table.
        if kernels.is_some_and(|k| k.is_empty()) && crate::rules_table::update_readme(std::path::Path::new("README.md"), &table)? {
            println!("xtask: README.md rule table regenerated from this run");
        }
    }
    println!("tests: {passed} passed, {failed} failed, {skipped} skipped");
    if let Some(e) = vm_error {
        return Err(e.context("the VM suite could not run"));
    }
    if !host_ok || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// `vmalock probe` on this machine, built as the tests built it.
fn host_probe() -> Result<String> {
    let out = cmd::cargo()
        .args(["run", "-q", "-p", "tracer-user", "--bin", "vmalock", "--", "probe"])
        .stderr(Stdio::inherit())
        .output()
        .context("running vmalock probe")?;
    if !out.status.success() {
        bail!("vmalock probe exited with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// "ok. 43 passed; 0 failed; ..." → the number before `what`.
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(what))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_cargo_summaries() {
        let s = "ok. 43 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 2.27s";
        assert_eq!(super::count(s, "passed"), 43);
        assert_eq!(super::count(s, "failed"), 2);
        assert_eq!(super::count("FAILED. 5 passed; 3 failed; 0 ignored", "failed"), 3);
    }
}
