//! Builds vm-images/module (the rule-breaking test module) against a kernel's Debian headers
//! (or, for a kernel built by `vm build`, against its prepared source tree), and the static `vmalock-trigger` helper that runs its modes in the guest.
//!
//! The headers, common headers and kbuild packages are extracted into one root, where the
//! headers' relative symlinks into the kbuild tree resolve; only the Makefile's absolute
//! `include /usr/src/...` line is pointed into it. Results are cached by kernel version and a
//! hash of the module's sources.

use std::{
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{apt::Apt, manifest::Kernel};
use crate::cmd;

const SOURCES: &[&str] = &["vmalock_test.c", "Kbuild"];

fn module_dir() -> PathBuf {
    cmd::workspace_root().join("vm-images/module")
}

fn source_hash() -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in SOURCES {
        std::fs::read(module_dir().join(f)).with_context(|| format!("reading vm-images/module/{f}"))?.hash(&mut h);
    }
    Ok(format!("{:016x}", h.finish()))
}

/// Debian packages kbuild needs on the host for an out-of-tree module (pahole for BTF on 6.12+).
fn ensure_build_tools(apt: &Apt) -> Result<()> {
    let missing: Vec<&str> = [("pahole", "dwarves"), ("make", "make"), ("gcc", "gcc")]
        .into_iter()
        .filter(|(bin, _)| cmd::output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none())
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("vm: installing {missing:?} to build the test module");
    cmd::run(apt.apt_get().args(["install", "-y", "--no-install-recommends"]).args(&missing))
}

pub fn build(k: &Kernel, v: &str, apt: &Apt, cache: &Path) -> Result<PathBuf> {
    let out_dir = cache.join("modules").join(v);
    let out = out_dir.join(format!("vmalock_test-{}.ko", source_hash()?));
    if out.exists() {
        return Ok(out);
    }
    ensure_build_tools(apt)?;
    let root = headers_root(k, v, apt, cache)?;
    let kdir = root.join(format!("usr/src/linux-headers-{v}-amd64"));
    if !kdir.is_dir() {
        bail!("{}: headers extracted, but {} is missing", k.name, kdir.display());
    }
    make(&k.name, &kdir, &out_dir)
}

/// The module for a kernel built here (`vm build`): its prepared source tree is the "headers".
/// `key` names the build (source version and recipe hash), so a rebuilt kernel rebuilds it.
pub fn build_in_tree(name: &str, tree: &Path, key: &str, cache: &Path) -> Result<PathBuf> {
    let out_dir = cache.join("modules").join(format!("{name}-{key}"));
    let out = out_dir.join(format!("vmalock_test-{}.ko", source_hash()?));
    if out.exists() {
        return Ok(out);
    }
    make(name, tree, &out_dir)
}

/// `make -C kdir M=... modules` in a fresh directory; the .ko lands in `out_dir`.
fn make(name: &str, kdir: &Path, out_dir: &Path) -> Result<PathBuf> {
    let out = out_dir.join(format!("vmalock_test-{}.ko", source_hash()?));
    let build = out_dir.join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    for f in SOURCES {
        std::fs::copy(module_dir().join(f), build.join(f))?;
    }
    let log = build.join("make.log");
    let output = Command::new("make")
        .arg("-C")
        .arg(kdir)
        .arg(format!("M={}", build.display()))
        .arg("modules")
        .output()
        .context("running make")?;
    std::fs::write(&log, [output.stdout.as_slice(), output.stderr.as_slice()].concat())?;
    if !output.status.success() {
        bail!("building the test module for {name} failed; the make log is {}", log.display());
    }
    std::fs::rename(build.join("vmalock_test.ko"), &out)?;
    let _ = std::fs::remove_dir_all(&build);
    Ok(out)
}

fn headers_root(k: &Kernel, v: &str, apt: &Apt, cache: &Path) -> Result<PathBuf> {
    let root = cache.join("headers").join(v);
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let tmp = cache.join("headers").join(format!(".{v}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for pkg in &k.headers {
        let pkg = pkg.replace("{v}", v);
        let deb = apt.download(&pkg, &cache.join("debs"))?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp)).with_context(|| format!("extracting {pkg}"))?;
    }
    let makefile = tmp.join(format!("usr/src/linux-headers-{v}-amd64/Makefile"));
    let text = std::fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let fixed = text.replace("include /usr/src/", &format!("include {}/usr/src/", root.display()));
    if fixed == text {
        return Err(anyhow!("{}: no absolute `include /usr/src/` line to point into the extracted tree", makefile.display()));
    }
    std::fs::write(&makefile, fixed)?;
    std::fs::write(tmp.join(".complete"), b"")?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root)?;
    Ok(root)
}

/// The static trigger helper for the guest, built once per source change.
pub fn trigger(cache: &Path) -> Result<PathBuf> {
    let src = module_dir().join("vmalock-trigger.c");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(&src)?.hash(&mut h);
    let out = cache.join("run").join(format!("vmalock-trigger-{:016x}", h.finish()));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(out.parent().unwrap())?;
    let tmp = out.with_extension("partial");
    cmd::run(Command::new("gcc").args(["-O2", "-Wall", "-static", "-o"]).arg(&tmp).arg(&src)).context("building vmalock-trigger (gcc -static)")?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}
