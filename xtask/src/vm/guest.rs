//! What runs inside a test guest: static vmalock binaries, the test executables, an /init that
//! runs them and prints one `VMALOCK-RESULT` line per test and a `VMALOCK-SUMMARY` line.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::initramfs::Cpio;
use crate::cmd;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Static executables for the guest (built once per `vm test`).
pub struct GuestBins {
    pub vmalock: PathBuf,
    pub workload: PathBuf,
    pub mix: PathBuf,
    /// The overhead benchmark's microbenchmarks (`cargo xtask bench --guest`).
    pub bench_load: PathBuf,
    /// Integration-test executables: (name, path).
    pub tests: Vec<(String, PathBuf)>,
    /// The test module's static trigger helper.
    pub trigger: Option<PathBuf>,
    /// Dynamically linked host files copied in at their own paths (an executable and the
    /// shared libraries it loads: see [`add_dynamic`]).
    pub extra: Vec<PathBuf>,
}

/// Adds a dynamically linked host executable to the guest at its own path, with every shared
/// library `ldd` says it loads (and the dynamic loader), so it runs there as on the host. The
/// bench's bpftrace column in a guest uses it: Debian's bpftrace is not static.
pub fn add_dynamic(bins: &mut GuestBins, exe: &Path) -> Result<()> {
    let out = cmd::output(Command::new("ldd").arg(exe)).ok_or_else(|| anyhow!("ldd {} failed (is it a dynamic executable?)", exe.display()))?;
    let libs = ldd_paths(&out);
    if libs.is_empty() {
        bail!("ldd {} named no library: {out}", exe.display());
    }
    bins.extra.push(exe.to_path_buf());
    bins.extra.extend(libs);
    Ok(())
}

/// The absolute paths in `ldd` output: "libx.so.1 => /usr/lib/.../libx.so.1 (0x...)" and the
/// loader's "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO line has none.
fn ldd_paths(out: &str) -> Vec<PathBuf> {
    out.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from)).collect()
}

pub fn build() -> Result<GuestBins> {
    println!("vm: building static guest binaries");
    let mut c = cmd::cargo();
    c.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(cmd::workspace_root().join("target/guest"))
        .args(["-p", "tracer-user", "--bins"]);
    cmd::run(&mut c).context("building static guest binaries")?;
    let out = cmd::workspace_root().join("target/guest").join(TARGET).join("release");

    // `cargo test --no-run` builds the test executables; its JSON names them.
    let mut c = cmd::cargo();
    c.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["test", "--no-run", "--release", "--message-format=json", "--target", TARGET, "--target-dir"])
        .arg(cmd::workspace_root().join("target/guest"))
        .args(["-p", "tracer-user", "--tests"])
        .stdout(Stdio::piped());
    let output = c.output().context("building guest test executables")?;
    if !output.status.success() {
        bail!("cargo test --no-run for the guest failed");
    }
    let mut tests = Vec::new();
    for line in output.stdout.lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let kind = v["target"]["kind"][0].as_str().unwrap_or_default();
        if kind != "test" {
            continue; // unit tests of the library run on the host
        }
        if let Some(exe) = v["executable"].as_str() {
            tests.push((v["target"]["name"].as_str().unwrap_or("test").to_string(), PathBuf::from(exe)));
        }
    }
    if tests.is_empty() {
        bail!("no integration-test executables were built for the guest");
    }
    Ok(GuestBins { vmalock: out.join("vmalock"), workload: out.join("vmalock-workload"), mix: out.join("vmalock-mix"), bench_load: out.join("vmalock-bench-load"), tests, trigger: None, extra: Vec::new() })
}

/// The guest's /init: a busybox shell script.
fn init_script() -> String {
    r#"#!/bin/sh
export PATH=/bin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf 2>/dev/null
echo "VMALOCK-GUEST-BOOTED $(uname -r)"
if [ -f /lib/vmalock_test.ko ]; then
  if insmod /lib/vmalock_test.ko 2>/tmp/insmod.err; then
    echo "VMALOCK-MODULE loaded"
  else
    echo "VMALOCK-MODULE failed: $(cat /tmp/insmod.err)"
  fi
else
  echo "VMALOCK-MODULE absent"
fi
if [ -f /run.sh ]; then
  echo "VMALOCK-RUN-BEGIN"
  sh /run.sh 2>&1
  echo "VMALOCK-RUN-END status=$?"
  sync
  poweroff -f
fi
echo "VMALOCK-PROBE-BEGIN"
vmalock probe 2>&1
echo "VMALOCK-PROBE-END"
pass=0; fail=0; skip=0
for t in /tests/*; do
  name=${t##*/}
  : > /tmp/skips; : > /tmp/found
  # One test per process, so each gets its own wall time: the suite's budget is spent where
  # these lines say (the slowest are listed on the host).
  "$t" --list --format=terse 2>/dev/null | sed -n 's/: test$//p' > /tmp/list
  # A test executable that cannot even list its tests (it crashed, or is not one) fails loudly
  # instead of contributing nothing.
  if [ ! -s /tmp/list ]; then
    echo "VMALOCK-RESULT $name::list fail"; fail=$((fail+1))
  fi
  while read -r tname; do
    start=$(date +%s)
    VMALOCK_SKIP_LOG=/tmp/skips VMALOCK_FOUND_LOG=/tmp/found VMALOCK_BIN=/bin/vmalock VMALOCK_WORKLOAD=/bin/vmalock-workload VMALOCK_MIX=/bin/vmalock-mix VMALOCK_BENCH_LOAD=/bin/vmalock-bench-load \
      "$t" --exact "$tname" --test-threads=1 > /tmp/out 2>&1
    echo "VMALOCK-TIME $name::$tname $(( $(date +%s) - start ))"
    # libtest: "test NAME ... ok|FAILED|ignored"; a skip is an "ok" whose name is in the skip log.
    seen=0
    while read -r word rname dots verdict rest; do
      [ "$word" = test ] && [ "$dots" = "..." ] && [ "$rname" = "$tname" ] || continue
      seen=1
      why=$(grep "^$tname: " /tmp/skips | head -n 1 | cut -d: -f2-)
      if [ "$verdict" = ok ] && [ -n "$why" ]; then
        echo "VMALOCK-RESULT $name::$tname skip$why"; skip=$((skip+1))
      elif [ "$verdict" = ok ]; then
        echo "VMALOCK-RESULT $name::$tname pass"; pass=$((pass+1))
      else
        echo "VMALOCK-RESULT $name::$tname fail"; fail=$((fail+1))
      fi
    done < /tmp/out
    # A test process that died before libtest printed its verdict (a signal, an abort) failed.
    if [ "$seen" = 0 ]; then
      echo "VMALOCK-RESULT $name::$tname fail"; fail=$((fail+1))
    fi
    if [ "$seen" = 0 ] || grep -q "FAILED" /tmp/out; then
      echo "VMALOCK-OUTPUT-BEGIN $name::$tname"; cat /tmp/out; echo "VMALOCK-OUTPUT-END $name::$tname"
    fi
  done < /tmp/list
  # What the regressions suite found, rule by rule (for the README's rule table).
  while read -r found; do echo "VMALOCK-FOUND $found"; done < /tmp/found
done
echo "VMALOCK-SUMMARY passed=$pass failed=$fail skipped=$skip"
sync
poweroff -f
"#
    .to_string()
}

/// The directories every initramfs has (the extra files' parents are added after them).
const BASE_DIRS: [&str; 7] = ["bin", "dev", "proc", "sys", "tmp", "lib", "tests"];

/// Writes the initramfs: busybox, the static binaries, the tests (only those named in `only`,
/// all when it is empty), /init, and the module if any.
pub fn initramfs(bins: &GuestBins, only: &[String], module: Option<&Path>, run: Option<&str>, dest: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| is_static(p))
        .ok_or_else(|| anyhow!("no static busybox: install busybox-static (`cargo xtask vm test` does so as root)"))?;
    let tmp = dest.with_extension("partial");
    let f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut c = Cpio::new(f);
    for d in BASE_DIRS {
        c.dir(d)?;
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    c.file("bin/busybox", 0o755, &read(busybox)?)?;
    c.symlink("bin/sh", "busybox")?;
    c.file("bin/vmalock", 0o755, &read(&bins.vmalock)?)?;
    c.file("bin/vmalock-workload", 0o755, &read(&bins.workload)?)?;
    c.file("bin/vmalock-mix", 0o755, &read(&bins.mix)?)?;
    c.file("bin/vmalock-bench-load", 0o755, &read(&bins.bench_load)?)?;
    if let Some(t) = &bins.trigger {
        c.file("bin/vmalock-trigger", 0o755, &read(t)?)?;
    }
    for (name, exe) in bins.tests.iter().filter(|(name, _)| only.is_empty() || only.contains(name)) {
        c.file(&format!("tests/{name}"), 0o755, &read(exe)?)?;
    }
    if let Some(ko) = module {
        c.file("lib/vmalock_test.ko", 0o644, &read(ko)?)?;
    }
    // At their host paths (read through symlinks), each parent directory written first.
    let mut dirs: std::collections::BTreeSet<PathBuf> = BASE_DIRS.iter().map(PathBuf::from).collect();
    for host in &bins.extra {
        let rel = host.strip_prefix("/").with_context(|| format!("{} is not an absolute path", host.display()))?;
        let mut parents: Vec<&Path> = rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).collect();
        parents.reverse();
        for d in parents {
            if dirs.insert(d.to_path_buf()) {
                c.dir(d.to_str().context("non-UTF-8 path")?)?;
            }
        }
        c.file(rel.to_str().context("non-UTF-8 path")?, 0o755, &read(host)?)?;
    }
    if let Some(script) = run {
        c.file("run.sh", 0o755, script.as_bytes())?;
    }
    c.file("init", 0o755, init_script().as_bytes())?;
    let mut w = c.finish()?;
    std::io::Write::flush(&mut w)?;
    drop(w);
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn is_static(p: &Path) -> bool {
    p.exists()
        && cmd::output(Command::new("file").arg("-L").arg(p)).map_or_else(
            // Without file(1), trust the busybox-static package's path.
            || p == Path::new("/bin/busybox"),
            |s| s.contains("statically linked") || s.contains("static-pie"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibbcc.so.0 => /lib/x86_64-linux-gnu/libbcc.so.0 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(ldd_paths(out), [PathBuf::from("/lib/x86_64-linux-gnu/libbcc.so.0"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]);
    }
}
