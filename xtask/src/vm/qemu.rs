//! Boots a kernel + initramfs under QEMU (TCG) with a hard timeout, the serial console in a file.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub struct Boot {
    /// Everything the guest printed on its serial console.
    pub serial: String,
    pub timed_out: bool,
    pub wall: Duration,
}

pub fn qemu_binary() -> Result<&'static str> {
    let bin = "qemu-system-x86_64";
    if Command::new(bin).arg("--version").stdout(Stdio::null()).status().is_err() {
        bail!("{bin} is not installed: `cargo xtask vm test` installs qemu-system-x86 itself when run as root");
    }
    Ok(bin)
}

/// TCG, never KVM: this machine's /dev/kvm is a nested paravirtual KVM that cannot run a stock
/// guest kernel (emulation failures; ../shared/notes/machine-and-kernels.md).
pub fn boot(kernel: &Path, initrd: &Path, log: &Path, timeout: Duration) -> Result<Boot> {
    let _ = std::fs::remove_file(log);
    let t0 = Instant::now();
    let mut child = Command::new(qemu_binary()?)
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: a panic reboots at once, and -no-reboot turns that into QEMU exiting.
        .args(["-append", "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let serial = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    Ok(Boot { serial, timed_out, wall: t0.elapsed() })
}
