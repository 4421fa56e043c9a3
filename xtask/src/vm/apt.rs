//! Debian packages through a private apt configuration: the machine's /etc/apt is read (for its
//! mirror URIs) but never edited, and every download is verified by apt against the suite's
//! signed Release file.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// Suites the test kernels and QEMU come from.
const SUITES: &[(&str, &str)] = &[
    ("main", "bookworm"),
    ("main", "bookworm-backports"),
    ("security", "bookworm-security"),
    ("main", "trixie-backports"),
    ("main", "sid"),
];

pub struct Apt {
    dir: PathBuf,
}

/// The archive and security mirror URIs this machine's apt already uses.
fn mirrors() -> Result<(String, String)> {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                text += &std::fs::read_to_string(&p).unwrap_or_default();
                text.push('\n');
            }
        }
    }
    let uris: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| w.trim_end_matches('/'))
        .collect();
    let main = uris.iter().find(|u| u.ends_with("/debian")).copied();
    let security = uris.iter().find(|u| u.ends_with("/debian-security")).copied();
    match (main, security) {
        (Some(m), Some(s)) => Ok((m.to_string(), s.to_string())),
        _ => bail!(
            "cannot find the Debian archive and security mirrors in /etc/apt (need URIs ending in \
             /debian and /debian-security); configure apt for Debian first"
        ),
    }
}

impl Apt {
    pub fn new(cache: &Path) -> Result<Apt> {
        let dir = cache.join("apt");
        for d in ["lists/partial", "archives/partial"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let (main, security) = mirrors()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut list = String::new();
        for (which, suite) in SUITES {
            let uri = if *which == "security" { &security } else { &main };
            list += &format!("deb [signed-by={keyring}] {uri} {suite} main\n");
        }
        let sources = dir.join("sources.list");
        if std::fs::read_to_string(&sources).ok().as_deref() != Some(list.as_str()) {
            std::fs::write(&sources, list)?;
            // New sources: the lists must be fetched again.
            let _ = std::fs::remove_file(dir.join("lists/.updated"));
        }
        Ok(Apt { dir })
    }

    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::sourcelist={d}/sources.list"),
            "-oDir::Etc::sourceparts=-".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}"),
            format!("-oDir::Cache::archives={d}/archives"),
            "-oAPT::Default-Release=bookworm".into(),
            // Downloads land in our own cache directory, which apt's _apt user cannot write.
            "-oAPT::Sandbox::User=root".into(),
            "-q".into(),
        ]
    }

    pub fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.args(self.opts()).env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn apt_cache(&self) -> Command {
        let mut c = Command::new("apt-cache");
        c.args(self.opts());
        c
    }

    /// `apt-get update` of the private lists, at most every 12 hours.
    pub fn update_if_stale(&self) -> Result<()> {
        let stamp = self.dir.join("lists/.updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(12 * 3600));
        if fresh {
            return Ok(());
        }
        println!("vm: apt-get update (private lists in {})", self.dir.display());
        cmd::run(self.apt_get().arg("update")).context("apt-get update of the private package lists failed")?;
        std::fs::write(&stamp, b"")?;
        Ok(())
    }

    /// Package names matching `re`, with capture group 1 of each.
    pub fn matching(&self, re: &regex::Regex) -> Result<Vec<(String, String)>> {
        let names = cmd::output(self.apt_cache().arg("pkgnames")).ok_or_else(|| anyhow!("apt-cache pkgnames failed"))?;
        Ok(names
            .lines()
            .filter_map(|n| re.captures(n).map(|c| (n.to_string(), c.get(1).map_or("", |m| m.as_str()).to_string())))
            .collect())
    }

    /// The package's .deb in `debs`, downloading (and verifying) it the first time.
    pub fn download(&self, pkg: &str, debs: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(debs)?;
        if let Some(found) = find_deb(debs, pkg)? {
            return Ok(found);
        }
        // apt-get download writes into the current directory: use a fresh one and move the
        // whole file into the cache only once apt has verified it.
        let tmp = debs.join(format!(".download-{pkg}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        println!("vm: downloading {pkg}");
        let r = cmd::run(self.apt_get().arg("download").arg(pkg).current_dir(&tmp));
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| format!("downloading {pkg} failed (is the package still in the archive? run `apt-cache search` with the private lists)"));
        }
        let deb = find_deb(&tmp, pkg)?.ok_or_else(|| anyhow!("apt-get download {pkg} produced no .deb"))?;
        let dest = debs.join(deb.file_name().unwrap());
        std::fs::rename(&deb, &dest)?;
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(dest)
    }

    /// Downloads `pkgs` and everything they depend on, as if nothing were installed, taking each
    /// from `suite` where it has one, into `archives` (verified by apt like every download). The
    /// dpkg status used is an empty file under `archives`, so the machine's own packages neither
    /// satisfy a dependency nor are touched. Returns the .debs.
    pub fn download_closure(&self, suite: &str, pkgs: &[String], archives: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(archives.join("partial"))?;
        let status = archives.join("status");
        std::fs::write(&status, b"")?;
        println!("vm: downloading {} and their dependencies from {suite}", pkgs.join(" "));
        cmd::run(
            self.apt_get()
                .arg(format!("-oAPT::Default-Release={suite}"))
                .arg(format!("-oDir::State::status={}", status.display()))
                .arg(format!("-oDir::State::extended_states={}", archives.join("extended_states").display()))
                .arg(format!("-oDir::Cache::archives={}", archives.display()))
                // Keep the binary cache built for the machine's own status out of this.
                .args(["-oDir::Cache::pkgcache=", "-oDir::Cache::srcpkgcache="])
                .args(["-oAPT::Install-Recommends=false", "-oAPT::Install-Suggests=false"])
                .args(["install", "--download-only", "-y"])
                .args(pkgs),
        )
        .with_context(|| format!("downloading {} and their dependencies from {suite} failed", pkgs.join(" ")))?;
        let mut debs: Vec<PathBuf> = std::fs::read_dir(archives)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        debs.retain(|p| p.extension().is_some_and(|x| x == "deb"));
        debs.sort();
        Ok(debs)
    }
}

fn find_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{pkg}_");
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// `dpkg-deb -x` into `dest` (via a temporary directory renamed when complete).
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let tmp = dest.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp)).with_context(|| format!("extracting {}", deb.display()))?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}
