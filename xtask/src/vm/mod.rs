//! `cargo xtask vm test`: boots each test kernel under QEMU with an initramfs this tool writes,
//! runs the in-guest suite, and prints a kernel × test table. Every boot has a timeout; a panic,
//! a hang or a missing result line is a failure that shows the end of the serial log.

pub mod apt;
mod build;
mod guest;
mod initramfs;
mod manifest;
mod module;
mod qemu;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};

use crate::cmd;

/// Where downloads, extracted kernels and built modules are kept between runs (and CI runs on
/// the same machine). Override with VMALOCK_VM_CACHE.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VMALOCK_VM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/vmalock/vm")
    })
}

pub fn report_dir() -> PathBuf {
    cmd::workspace_root().join("target/vm-report")
}

#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Pass,
    Fail(String),
    Skip(String),
}

pub struct KernelRun {
    pub kernel: String,
    pub release: String,
    pub results: Vec<(String, Status)>,
    /// `vmalock probe`'s report in this guest (empty if it never ran).
    pub probe: String,
    /// What the regressions suite found here: `rule<TAB>item<TAB>how` lines (`VMALOCK-FOUND`).
    pub found: Vec<String>,
}

/// Installs QEMU (the bookworm-backports build, matching the preinstalled qemu-utils) and a
/// static busybox when missing.
fn ensure_host_tools(apt: &apt::Apt) -> Result<()> {
    let have_qemu = qemu::qemu_binary().is_ok();
    let have_busybox = Path::new("/bin/busybox").exists();
    if have_qemu && have_busybox {
        return Ok(());
    }
    if !cmd::is_root() {
        return Err(anyhow!("qemu-system-x86 and busybox-static are needed: run `cargo xtask vm test` as root, or apt-get install them"));
    }
    println!("vm: installing qemu-system-x86 and busybox-static (bookworm-backports)");
    cmd::run(apt.apt_get().args(["install", "-y", "--no-install-recommends", "-t", "bookworm-backports", "qemu-system-x86", "busybox-static"]))
        .context("installing qemu-system-x86 and busybox-static")
}

/// `cargo xtask vm run --kernel K -- CMD`: boots K with the usual initramfs (module loaded)
/// and runs CMD in a shell instead of the suite, printing what it prints.
/// What every boot needs first: the private package lists, QEMU and busybox on the host, and
/// the static guest binaries (with the test module's trigger helper).
fn setup(cache: &Path) -> Result<(apt::Apt, guest::GuestBins)> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let apt = apt::Apt::new(cache)?;
    apt.update_if_stale()?;
    ensure_host_tools(&apt)?;
    let mut bins = guest::build()?;
    bins.trigger = Some(module::trigger(cache)?);
    Ok((apt, bins))
}

/// How long one guest's whole suite may run before it counts as a hang. Under TCG the 7.2
/// suite alone takes 12-13 minutes, a busy host pushed it past 15, and the 6.12 suite took
/// 1044 s of a 1200 s limit in a clean-clone CI run (2026-11-27): a hang, not a slow host,
/// is what this must catch.
pub const SUITE_TIMEOUT_SECS: u64 = 1800;

/// Boots kernel `name` and runs `command` instead of the suite. `dynamic`: host executables to
/// copy in with their shared libraries (the bench's bpftrace).
pub fn run_command(name: &str, command: &str, timeout: Duration, dynamic: &[PathBuf]) -> Result<()> {
    let root = cmd::workspace_root();
    let k = manifest::select(&manifest::load(&root)?, &[name.to_string()])?.remove(0);
    let cache = cache_dir();
    let (apt, mut bins) = setup(&cache)?;
    for exe in dynamic {
        guest::add_dynamic(&mut bins, exe)?;
    }
    let ready = prepare(&k, &apt, &cache)?;
    let module = ready.module.and_then(|m| m.map_err(|e| println!("vm: no test module: {e:#}")).ok());
    let vmlinuz = ready.vmlinuz;
    let initrd = cache.join("run").join(format!("{}-run.cpio", k.name));
    std::fs::create_dir_all(initrd.parent().unwrap())?;
    guest::initramfs(&bins, &[], module.as_deref(), Some(command), &initrd)?;
    std::fs::create_dir_all(report_dir())?;
    let log = report_dir().join(format!("{}.run.log", k.name));
    let boot = qemu::boot(&vmlinuz, &initrd, &log, timeout)?;
    let mut printing = false;
    for line in boot.serial.lines() {
        if line.starts_with("VMALOCK-RUN-BEGIN") {
            printing = true;
        } else if line.starts_with("VMALOCK-RUN-END") {
            println!("{line}");
            printing = false;
        } else if printing {
            println!("{line}");
        }
    }
    if boot.timed_out {
        anyhow::bail!("the guest timed out; serial log: {}", log.display());
    }
    Ok(())
}

/// A kernel ready to boot, and its test module (None: no module for this kernel).
struct Ready {
    vmlinuz: PathBuf,
    version: String,
    module: Option<Result<PathBuf>>,
}

fn not_built(recipe: &str) -> String {
    format!("not built (run cargo xtask vm build {recipe})")
}

/// A Debian kernel is downloaded (cached); a kernel with a recipe must have been built by
/// `cargo xtask vm build` already: it is never built here.
fn prepare(k: &manifest::Kernel, apt: &apt::Apt, cache: &Path) -> Result<Ready> {
    if let Some(recipe) = &k.build {
        let b = build::find(recipe, cache)?.ok_or_else(|| anyhow!("{}: {}", k.name, not_built(recipe)))?;
        let module = Some(module::build_in_tree(&k.name, &b.tree, &b.key, cache));
        return Ok(Ready { vmlinuz: b.bzimage, version: b.release, module });
    }
    let (vmlinuz, version) = fetch_kernel(k, apt, cache)?;
    let module = (!k.headers.is_empty()).then(|| module::build(k, &version, apt, cache));
    Ok(Ready { vmlinuz, version, module })
}

fn fetch_kernel(k: &manifest::Kernel, apt: &apt::Apt, cache: &Path) -> Result<(PathBuf, String)> {
    let re = regex::Regex::new(&k.image)?;
    let (pkg, v) = apt
        .matching(&re)?
        .into_iter()
        .max_by_key(|(_, v)| manifest::version_key(v))
        .ok_or_else(|| anyhow!("{}: no package matches {} in the private package lists", k.name, k.image))?;
    let deb = apt.download(&pkg, &cache.join("debs"))?;
    let tree = cache.join("kernels").join(&pkg);
    apt::extract(&deb, &tree)?;
    Ok((find_vmlinuz(&tree)?, v))
}

/// `build_missing`: kernels with a recipe that are not built yet are built first (as
/// `cargo xtask test` does); otherwise they are skipped, or an error when named.
pub fn test(names: &[String], timeout: Duration, build_missing: bool) -> Result<Vec<KernelRun>> {
    let root = cmd::workspace_root();
    let kernels = manifest::select(&manifest::load(&root)?, names)?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let unbuilt = unbuilt(&kernels, !names.is_empty() && !build_missing, |recipe| Ok(build::find(recipe, &cache)?.is_some()))?;
    let (apt, bins) = setup(&cache)?;
    let reports = report_dir();
    std::fs::create_dir_all(&reports)?;

    let mut runs = Vec::new();
    for k in &kernels {
        if unbuilt.contains(&k.name) {
            let recipe = k.build.as_deref().unwrap_or(&k.name);
            let skipped = |status| KernelRun { kernel: k.name.clone(), release: String::new(), results: vec![("build".into(), status)], probe: String::new(), found: Vec::new() };
            if !build_missing {
                let why = not_built(recipe);
                println!("vm: skipping {}: {why}", k.name);
                runs.push(skipped(Status::Skip(why)));
                continue;
            }
            // The build prints each step's time and the total (about 22 min for a 6.12
            // defconfig-sized kernel on 2 idle cores).
            println!("vm: {} is not built: building it (cargo xtask vm build {recipe})", k.name);
            let t0 = std::time::Instant::now();
            if let Err(e) = build::build(recipe, &apt, &cache) {
                println!("vm: building {} failed after {:.0} s: {e:#}", k.name, t0.elapsed().as_secs_f64());
                runs.push(skipped(Status::Fail(format!("{e:#}"))));
                continue;
            }
        }
        runs.push(run_kernel(k, &apt, &cache, &bins, &reports, timeout)?);
    }
    print_table(&runs);
    write_report(&runs, &reports)?;
    Ok(runs)
}

/// Kernels built here are never built by `vm test`: the names of those not built yet, to be
/// skipped in a run over all kernels (as in CI); when kernels were named, an unbuilt one is an
/// error telling the user to build it.
fn unbuilt(kernels: &[manifest::Kernel], named: bool, is_built: impl Fn(&str) -> Result<bool>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in kernels {
        if let Some(recipe) = &k.build
            && !is_built(recipe)?
        {
            if named {
                anyhow::bail!("{} is built locally and is not built yet: run `cargo xtask vm build {recipe}` first", k.name);
            }
            out.push(k.name.clone());
        }
    }
    Ok(out)
}

fn run_kernel(k: &manifest::Kernel, apt: &apt::Apt, cache: &Path, bins: &guest::GuestBins, reports: &Path, timeout: Duration) -> Result<KernelRun> {
    let Ready { vmlinuz, version: v, module } = prepare(k, apt, cache)?;
    let mut results = Vec::new();
    let module = match module {
        None => {
            results.push(("module::build".to_string(), Status::Skip("no buildable headers for this kernel here (see vm-images/kernels.toml)".into())));
            None
        }
        Some(Ok(ko)) => {
            results.push(("module::build".to_string(), Status::Pass));
            Some(ko)
        }
        Some(Err(e)) => {
            results.push(("module::build".to_string(), Status::Fail(format!("{e:#}"))));
            None
        }
    };
    let initrd = cache.join("run").join(format!("{}.cpio", k.name));
    std::fs::create_dir_all(initrd.parent().unwrap())?;
    guest::initramfs(bins, &k.tests, module.as_deref(), None, &initrd)?;
    println!("vm: booting {} ({})", k.name, vmlinuz.display());
    let log = reports.join(format!("{}.serial.log", k.name));
    let boot = qemu::boot(&vmlinuz, &initrd, &log, timeout)?;
    println!("vm: {} finished in {:.0} s{}", k.name, boot.wall.as_secs_f64(), if boot.timed_out { " (TIMED OUT)" } else { "" });
    let parsed = parse_serial(&boot.serial, boot.timed_out, &k.expect, module.is_some());
    std::fs::write(reports.join(format!("{}.probe.txt", k.name)), &parsed.probe)?;
    results.extend(parsed.results);
    print_slowest(&k.name, &parsed.times);
    if results.iter().any(|(_, s)| matches!(s, Status::Fail(_))) {
        println!("--- {}: last lines of the serial log ({})", k.name, log.display());
        for l in tail(&boot.serial, 40) {
            println!("    {l}");
        }
    }
    Ok(KernelRun { kernel: k.name.clone(), release: parsed.release.unwrap_or(v), results, probe: parsed.probe, found: parsed.found })
}

/// The kernel image in an extracted package: `boot/vmlinuz-*` (classic layout), or
/// `usr/lib/modules/*/vmlinuz*` (7.x's linux-binary packages, merged /usr).
fn find_vmlinuz(tree: &Path) -> Result<PathBuf> {
    let is_image = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz"));
    let boot = std::fs::read_dir(tree.join("boot")).into_iter().flatten().flatten().map(|e| e.path());
    let modules = std::fs::read_dir(tree.join("usr/lib/modules"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten().map(|e| e.path()));
    boot.chain(modules)
        .find(|p| is_image(p))
        .ok_or_else(|| anyhow!("no boot/vmlinuz-* or usr/lib/modules/*/vmlinuz* in {}", tree.display()))
}

pub struct Parsed {
    pub release: Option<String>,
    pub probe: String,
    pub results: Vec<(String, Status)>,
    /// `VMALOCK-FOUND` lines, without the marker.
    pub found: Vec<String>,
    /// Each test's wall time in the guest, in seconds (`VMALOCK-TIME`).
    pub times: Vec<(String, u64)>,
}

/// Reads the guest's serial log: the boot marker, the probe report, the result lines, the summary.
pub fn parse_serial(serial: &str, timed_out: bool, expect: &[String], module_expected: bool) -> Parsed {
    let mut results = Vec::new();
    let mut release = None;
    let mut probe = String::new();
    let mut in_probe = false;
    let mut summary = false;
    let mut module_line = None;
    let mut found = Vec::new();
    let mut times = Vec::new();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(r) = line.strip_prefix("VMALOCK-GUEST-BOOTED ") {
            release = Some(r.trim().to_string());
        } else if line == "VMALOCK-PROBE-BEGIN" {
            in_probe = true;
        } else if line == "VMALOCK-PROBE-END" {
            in_probe = false;
        } else if in_probe {
            probe += line;
            probe.push('\n');
        } else if let Some(m) = line.strip_prefix("VMALOCK-MODULE ") {
            module_line = Some(m.to_string());
        } else if let Some(r) = line.strip_prefix("VMALOCK-RESULT ") {
            let mut it = r.splitn(3, ' ');
            let name = it.next().unwrap_or("?").to_string();
            let status = match it.next().unwrap_or("") {
                "pass" => Status::Pass,
                "skip" => Status::Skip(it.next().unwrap_or("").trim().to_string()),
                _ => Status::Fail("failed in the guest (its output is in the serial log)".into()),
            };
            results.push((name, status));
        } else if let Some(t) = line.strip_prefix("VMALOCK-TIME ") {
            if let Some((name, secs)) = t.rsplit_once(' ').and_then(|(n, s)| Some((n.to_string(), s.parse().ok()?))) {
                times.push((name, secs));
            }
        } else if let Some(f) = line.strip_prefix("VMALOCK-FOUND ") {
            found.push(f.to_string());
        } else if line.starts_with("VMALOCK-SUMMARY ") {
            summary = true;
        }
    }
    let mut pre = Vec::new();
    let panic = serial.contains("Kernel panic");
    pre.push((
        "boot".to_string(),
        match (&release, panic, timed_out) {
            (_, true, _) => Status::Fail("kernel panic".into()),
            (None, _, true) => Status::Fail("timed out before /init ran".into()),
            (None, _, false) => Status::Fail("the guest never reached /init".into()),
            _ => Status::Pass,
        },
    ));
    if module_expected {
        pre.push((
            "module::load".to_string(),
            match module_line.as_deref() {
                Some("loaded") => Status::Pass,
                Some(other) => Status::Fail(other.to_string()),
                None => Status::Fail("no module line".into()),
            },
        ));
    }
    for fam in expect {
        let works = probe.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(fam.as_str()) && w.next() == Some("works")
        });
        pre.push((
            format!("probe::{fam}"),
            if works { Status::Pass } else { Status::Fail(format!("vmalock probe does not report {fam} working")) },
        ));
    }
    results.splice(0..0, pre);
    if release.is_some() && !summary {
        results.push((
            "summary".to_string(),
            Status::Fail(if timed_out { "timed out before the summary line".into() } else { "no summary line".into() }),
        ));
    }
    Parsed { release, probe, results, found, times }
}

/// Where a suite's wall time went: the five slowest tests and the total, so a suite that
/// creeps towards its timeout (or CI's) shows which test to make cheaper.
fn print_slowest(kernel: &str, times: &[(String, u64)]) {
    if times.is_empty() {
        return;
    }
    let mut by_time = times.to_vec();
    by_time.sort_by(|a, b| b.1.cmp(&a.1));
    let total: u64 = times.iter().map(|t| t.1).sum();
    let top: Vec<String> = by_time.iter().take(5).map(|(n, s)| format!("{n} {s} s")).collect();
    println!("vm: {kernel}: {} tests took {total} s; slowest: {}", times.len(), top.join(", "));
}

fn tail(s: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn cell(s: &Status) -> String {
    match s {
        Status::Pass => "pass".into(),
        Status::Fail(_) => "FAIL".into(),
        Status::Skip(_) => "skip".into(),
    }
}

fn print_table(runs: &[KernelRun]) {
    let mut tests: Vec<String> = Vec::new();
    for r in runs {
        for (t, _) in &r.results {
            if !tests.contains(t) {
                tests.push(t.clone());
            }
        }
    }
    let w = tests.iter().map(|t| t.len()).max().unwrap_or(4).max(4);
    print!("\n{:w$}", "test");
    for r in runs {
        print!("  {:>12}", r.kernel);
    }
    println!();
    for t in &tests {
        print!("{t:w$}");
        for r in runs {
            let c = r.results.iter().find(|(n, _)| n == t).map_or("-".to_string(), |(_, s)| cell(s));
            print!("  {c:>12}");
        }
        println!();
    }
    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in runs {
        for (t, s) in &r.results {
            match s {
                Status::Fail(m) => why.entry(format!("FAIL {}/{t}", r.kernel)).or_default().push(m.clone()),
                Status::Skip(m) => why.entry(format!("skip {}/{t}", r.kernel)).or_default().push(m.clone()),
                Status::Pass => {}
            }
        }
    }
    for (k, v) in why {
        println!("{k}: {}", v.join("; "));
    }
}

fn write_report(runs: &[KernelRun], dir: &Path) -> Result<()> {
    let json: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "kernel": r.kernel,
                "release": r.release,
                "found": r.found,
                "results": r.results.iter().map(|(t, s)| {
                    let (status, why) = match s { Status::Pass => ("pass", ""), Status::Fail(m) => ("fail", m.as_str()), Status::Skip(m) => ("skip", m.as_str()) };
                    serde_json::json!({"test": t, "status": status, "why": why})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&json)?)?;
    println!("vm: report in {}", dir.display());
    Ok(())
}

/// `cargo xtask vm build NAME`.
pub fn build_kernel(name: &str) -> Result<()> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let apt = apt::Apt::new(&cache)?;
    apt.update_if_stale()?;
    build::build(name, &apt, &cache).map(|_| ())
}

pub fn list() -> Result<()> {
    for k in manifest::load(&cmd::workspace_root())? {
        let only = if k.tests.is_empty() { String::new() } else { format!(" [runs only: {}]", k.tests.join(", ")) };
        println!("{:<16} {:<18} {}{only}", k.name, k.suite, k.about);
    }
    Ok(())
}

/// (passed, failed, skipped) over all kernels.
pub fn tally(runs: &[KernelRun]) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for r in runs {
        for (_, s) in &r.results {
            match s {
                Status::Pass => t.0 += 1,
                Status::Fail(_) => t.1 += 1,
                Status::Skip(_) => t.2 += 1,
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[    0.0] Linux version 6.12.1\nVMALOCK-GUEST-BOOTED 6.12.1-amd64\nVMALOCK-MODULE loaded\nVMALOCK-PROBE-BEGIN\n  tp_btf      works    ok\n  fentry      REFUSED  EPERM\nVMALOCK-PROBE-END\nVMALOCK-TIME live_host::a 12\nVMALOCK-RESULT live_host::a pass\nVMALOCK-RESULT live_host::b skip needs root\nVMALOCK-RESULT live_host::c fail\nVMALOCK-FOUND new-vma-locked\titem 5\tlive\nVMALOCK-SUMMARY passed=1 failed=1 skipped=1\n";

    #[test]
    fn parses_results_probe_and_expectations() {
        let p = parse_serial(LOG, false, &["tp_btf".into(), "fentry".into()], true);
        assert_eq!(p.release.as_deref(), Some("6.12.1-amd64"));
        let get = |n: &str| p.results.iter().find(|(t, _)| t == n).map(|(_, s)| s.clone()).unwrap();
        assert_eq!(get("boot"), Status::Pass);
        assert_eq!(get("module::load"), Status::Pass);
        assert_eq!(get("probe::tp_btf"), Status::Pass);
        assert!(matches!(get("probe::fentry"), Status::Fail(_)));
        assert_eq!(get("live_host::a"), Status::Pass);
        assert_eq!(get("live_host::b"), Status::Skip("needs root".into()));
        assert!(matches!(get("live_host::c"), Status::Fail(_)));
        assert!(!p.results.iter().any(|(t, _)| t == "summary"));
        assert_eq!(p.found, ["new-vma-locked\titem 5\tlive"]);
        assert_eq!(p.times, [("live_host::a".to_string(), 12)]);
    }

    #[test]
    fn unbuilt_local_kernels_are_skipped_unless_named() {
        let all = manifest::load(&cmd::workspace_root()).unwrap();
        assert_eq!(unbuilt(&all, false, |_| Ok(false)).unwrap(), vec!["debug-6.12".to_string(), "seed-regressions".to_string()]);
        assert!(unbuilt(&all, false, |_| Ok(true)).unwrap().is_empty());
        let named = manifest::select(&all, &["debug-6.12".into()]).unwrap();
        let e = unbuilt(&named, true, |_| Ok(false)).unwrap_err().to_string();
        assert!(e.contains("cargo xtask vm build debug-6.12"), "{e}");
        assert!(not_built("debug-6.12").contains("run cargo xtask vm build debug-6.12"));
    }

    #[test]
    fn panics_hangs_and_missing_summaries_are_failures() {
        let p = parse_serial("Kernel panic - not syncing: VFS\n", false, &[], false);
        assert!(matches!(&p.results[0].1, Status::Fail(m) if m == "kernel panic"));
        let p = parse_serial("booting...\n", true, &[], false);
        assert!(matches!(&p.results[0].1, Status::Fail(m) if m.contains("timed out")));
        let p = parse_serial("VMALOCK-GUEST-BOOTED 7.2\nVMALOCK-RESULT x::y pass\n", true, &[], false);
        assert!(matches!(&p.results.last().unwrap().1, Status::Fail(m) if m.contains("summary")));
    }
}
