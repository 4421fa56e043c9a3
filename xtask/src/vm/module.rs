//! Builds vm-images/module (the rule-breaking test module) against a kernel's Debian headers
//! (or, for a kernel built by `vm build`, against its prepared source tree), and the static `vmalock-trigger` helper that runs its modes in the guest.
//!
//! The headers, common headers and kbuild packages are extracted into one root, where the
//! headers' relative symlinks into the kbuild tree resolve; only the Makefile's absolute
//! `include /usr/src/...` line is pointed into it. Results are cached by kernel version and a
//! hash of the module's sources.
//!
//! A kernel whose headers need a newer compiler or C library than this machine has (`chroot =
//! "sid"` in kernels.toml: 7.2 needs gcc-16 and glibc 2.38+ for the prebuilt kbuild tools) is
//! built in a build root instead: the headers packages and everything they depend on (the
//! compiler among them), plus a shell, make and the basic tools, all from that suite, are
//! downloaded through the private apt configuration and extracted (never installed on this
//! machine). kbuild then runs chrooted into it, in a private mount and pid namespace with its own
//! /proc, so nothing stays mounted. The root is cached per kernel version.

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
    let headers = format!("usr/src/linux-headers-{v}-amd64");
    if let Some(suite) = &k.chroot {
        if !cmd::is_root() {
            bail!("{}: the test module is built in a chroot of {suite} packages, which needs root", k.name);
        }
        let root = build_root(k, v, suite, apt, cache)?;
        if !root.join(&headers).is_dir() {
            bail!("{}: build root made, but {} is missing in it", k.name, root.join(&headers).display());
        }
        return make(&k.name, &Path::new("/").join(&headers), &out_dir, Some(&root));
    }
    ensure_build_tools(apt)?;
    let root = headers_root(k, v, apt, cache)?;
    let kdir = root.join(&headers);
    if !kdir.is_dir() {
        bail!("{}: headers extracted, but {} is missing", k.name, kdir.display());
    }
    make(&k.name, &kdir, &out_dir, None)
}

/// What kbuild runs besides the compiler, binutils and pahole (which the headers packages depend
/// on): Essential packages are never declared as dependencies, so they are named here.
const BUILD_ROOT_TOOLS: &[&str] = &["base-files", "dash", "bash", "coreutils", "make", "sed", "grep", "mawk", "findutils", "diffutils"];

/// A root of `suite` packages to chroot into: kernel `k`'s headers packages, their dependencies
/// and [`BUILD_ROOT_TOOLS`], extracted with `dpkg-deb -x` (no maintainer script runs), plus what
/// those scripts or the installer would have made: /dev nodes and the awk alternative.
fn build_root(k: &Kernel, v: &str, suite: &str, apt: &Apt, cache: &Path) -> Result<PathBuf> {
    let root = cache.join("buildroots").join(format!("{suite}-{v}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let started = std::time::Instant::now();
    let tmp = cache.join("buildroots").join(format!(".{suite}-{v}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let debs_dir = tmp.join(".debs");
    let mut pkgs: Vec<String> = k.headers.iter().map(|p| p.replace("{v}", v)).collect();
    pkgs.extend(BUILD_ROOT_TOOLS.iter().map(|s| s.to_string()));
    let mut debs = apt.download_closure(suite, &pkgs, &debs_dir)?;
    // base-files first: it makes the merged-/usr links (bin -> usr/bin, ...) that the others'
    // paths go through.
    debs.sort_by_key(|d| !d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("base-files_")));
    println!("vm: extracting {} packages into {}", debs.len(), root.display());
    for deb in &debs {
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp)).with_context(|| format!("extracting {}", deb.display()))?;
    }
    std::fs::remove_dir_all(&debs_dir)?;
    for (node, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("urandom", 1, 9)] {
        let path = tmp.join("dev").join(node);
        if !path.exists() {
            std::fs::create_dir_all(tmp.join("dev"))?;
            cmd::run(Command::new("mknod").args(["-m", "666"]).arg(&path).args(["c", &major.to_string(), &minor.to_string()]))?;
        }
    }
    let awk = tmp.join("usr/bin/awk");
    if awk.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("mawk", &awk)?;
    }
    std::fs::write(tmp.join(".complete"), b"")?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root)?;
    println!("vm: build root {} ready in {:.0} s", root.display(), started.elapsed().as_secs_f64());
    Ok(root)
}

/// The module for a kernel built here (`vm build`): its prepared source tree is the "headers".
/// `key` names the build (source version and recipe hash), so a rebuilt kernel rebuilds it.
pub fn build_in_tree(name: &str, tree: &Path, key: &str, cache: &Path) -> Result<PathBuf> {
    let out_dir = cache.join("modules").join(format!("{name}-{key}"));
    let out = out_dir.join(format!("vmalock_test-{}.ko", source_hash()?));
    if out.exists() {
        return Ok(out);
    }
    make(name, tree, &out_dir, None)
}

/// `make -C kdir M=... modules` in a fresh directory; the .ko lands in `out_dir`. With `root`,
/// make runs chrooted into it (`kdir` is then a path inside the root), in new mount and pid
/// namespaces with a fresh /proc (objtool reads it) that vanishes with them.
fn make(name: &str, kdir: &Path, out_dir: &Path, root: Option<&Path>) -> Result<PathBuf> {
    let out = out_dir.join(format!("vmalock_test-{}.ko", source_hash()?));
    std::fs::create_dir_all(out_dir)?;
    // `build` as seen from here, `inside` as make sees it.
    let (build, inside) = match root {
        None => {
            let b = out_dir.join(format!("build-{}", std::process::id()));
            (b.clone(), b)
        }
        Some(r) => {
            let inside = PathBuf::from(format!("/build/vmalock_test-{}", std::process::id()));
            (r.join(inside.strip_prefix("/")?), inside)
        }
    };
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    for f in SOURCES {
        std::fs::copy(module_dir().join(f), build.join(f))?;
    }
    let log = build.join("make.log");
    let mut c = match root {
        None => Command::new("make"),
        Some(r) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--wd=/"])
                .arg(format!("--root={}", r.display()))
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LC_ALL", "C")
                .env("HOME", "/root")
                .arg("make");
            c
        }
    };
    let output = c.arg("-C").arg(kdir).arg(format!("M={}", inside.display())).arg("modules").output().context("running make")?;
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
