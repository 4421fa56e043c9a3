//! Installs what the eBPF build needs, idempotently. Recipe: ../shared/notes/bpf-toolchain.md.
//!
//! - the nightly toolchain with `rust-src` (the eBPF crate builds `core` with -Z build-std);
//! - bpf-linker 0.13 built against the nightly's *own* libLLVM: no Debian package has LLVM 22,
//!   and bpf-linker must use the same LLVM major as rustc. A prefix whose lib/ holds symlinks to
//!   the nightly's libLLVM stands in for an LLVM install; bpf-linker's RUNPATH points there.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, anyhow};

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.13";

pub fn ensure_all() -> Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_tmux();
    Ok(())
}

/// tmux runs the dashboard's end-to-end test (a real terminal to drive `vmalock watch` in).
/// Best effort: without it that one test reports itself skipped.
fn ensure_tmux() {
    if cmd::output(Command::new("tmux").arg("-V")).is_some() {
        println!("setup: tmux: present");
        return;
    }
    if !cmd::is_root() {
        println!("setup: tmux: missing (the dashboard's tmux test will be skipped; run as root to install it)");
        return;
    }
    println!("setup: installing tmux");
    let install = || cmd::run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", "tmux"]).env("DEBIAN_FRONTEND", "noninteractive"));
    if install().is_err() && cmd::run(Command::new("apt-get").arg("update")).is_ok() && install().is_ok() {
        return;
    }
    if cmd::output(Command::new("tmux").arg("-V")).is_none() {
        println!("setup: tmux: could not be installed (the dashboard's tmux test will be skipped)");
    }
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    c.env("PATH", cmd::path_with_cargo_bin());
    c
}

fn ensure_nightly() -> Result<()> {
    let list = cmd::output(rustup().args(["toolchain", "list"]))
        .ok_or_else(|| anyhow!("rustup is not installed; vmalock's eBPF half needs a rustup-managed nightly"))?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: nightly toolchain: present");
        return Ok(());
    }
    println!("setup: installing the nightly toolchain");
    cmd::run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = cmd::output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .ok_or_else(|| anyhow!("`rustc +nightly --print sysroot` failed"))?;
    Ok(PathBuf::from(s.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        println!("setup: nightly rust-src: present");
        return Ok(());
    }
    println!("setup: installing rust-src for nightly");
    cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's libLLVM (file name and LLVM major).
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let lib = nightly_sysroot()?.join("lib");
    let file = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}: this nightly does not ship its LLVM as a shared library", lib.display()))?;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty())
        .ok_or_else(|| anyhow!("cannot read the LLVM major from {name}"))?
        .to_string();
    Ok((file, major))
}

/// bpf-linker is usable when it runs, is 0.13, and its libLLVM resolves to the nightly's own.
fn bpf_linker_ok(llvm_name: &str) -> Result<(), String> {
    let bin = cmd::cargo_home().join("bin/bpf-linker");
    let version = cmd::output(Command::new(&bin).arg("--version")).ok_or("not installed (or does not start)")?;
    if !version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Err(format!("{} is installed; want {BPF_LINKER_VERSION}", version.trim()));
    }
    let ldd = cmd::output(Command::new("ldd").arg(&bin)).ok_or("ldd failed")?;
    match ldd.lines().find(|l| l.contains("libLLVM")) {
        Some(l) if l.contains(llvm_name) && !l.contains("not found") => Ok(()),
        Some(l) => Err(format!("linked against another LLVM ({}); the nightly ships {llvm_name}", l.trim())),
        None => Err("not linked against a shared libLLVM".into()),
    }
}

fn ensure_bpf_linker() -> Result<()> {
    let (llvm_file, major) = nightly_llvm()?;
    let llvm_name = llvm_file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    match bpf_linker_ok(&llvm_name) {
        Ok(()) => {
            println!("setup: bpf-linker {BPF_LINKER_VERSION} on the nightly's LLVM {major}: present");
            return Ok(());
        }
        Err(why) => println!("setup: bpf-linker: {why}; building it (about 2 minutes)"),
    }
    // The prefix stands in for an LLVM install; it must outlive the build (RUNPATH points here).
    let prefix = cmd::cargo_home().join("vmalock-llvm").join(&llvm_name);
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in ["libLLVM.so".to_string(), llvm_name.clone()] {
        let path = lib.join(&link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&llvm_file, &path).with_context(|| format!("linking {}", path.display()))?;
    }
    let mut c = rustup();
    c.args(["run", "nightly", "cargo", "install", "bpf-linker", "--force", "--version", &format!("~{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix);
    cmd::run(&mut c).context(
        "building bpf-linker failed; its feature for this LLVM may not exist in bpf-linker 0.13 \
         (see ../shared/notes/bpf-toolchain.md)",
    )?;
    bpf_linker_ok(&llvm_name).map_err(|why| anyhow!("bpf-linker was built but is not usable: {why}"))?;
    println!("setup: bpf-linker installed");
    Ok(())
}
