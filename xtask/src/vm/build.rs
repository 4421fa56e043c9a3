//! `cargo xtask vm build NAME`: a test kernel built here from a Debian source package, by the
//! recipe in vm-images/recipes/NAME.toml (source package + config fragment + optional patches,
//! applied in order with `patch -p1` after the source is extracted).
//!
//! config = x86_64_defconfig + kvm_guest.config + the fragment (merge_config.sh), then
//! olddefconfig; every option the fragment sets is verified in the result. The build is
//! `bzImage modules modules_prepare` (the few =m modules give the tree its Module.symvers), so
//! the tree also serves as the test module's "headers".
//!
//! Cached in `<cache>/builds/NAME/<source version>-<hash of recipe and fragment>`: built under a
//! temporary name and renamed only when complete. Each step writes its output to
//! `<build dir>/logs/<step>.log`; a failed step names itself and its log (the partial directory
//! is kept until the next build, for reading).

use std::{
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use super::apt::Apt;
use crate::cmd;

/// Bump when the steps below change in a way that changes the result.
const STEPS_VERSION: &str = "1";

/// Host packages the kernel build needs (pahole from dwarves must be there before configuring:
/// DEBUG_INFO_BTF depends on the pahole version kconfig sees).
const HOST_PACKAGES: &[&str] = &["gcc", "make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "dwarves", "cpio", "xz-utils", "patch"];

#[derive(Debug, Deserialize)]
pub struct Recipe {
    /// Debian source package, e.g. "linux-source-6.12" (its newest version is built).
    pub source: String,
    /// Config fragment, relative to vm-images/recipes.
    pub fragment: String,
    /// Patches, relative to vm-images/recipes, applied in this order with `patch -p1` in the
    /// extracted source (part of the cache key).
    #[serde(default)]
    pub patches: Vec<String>,
}

/// A complete build.
pub struct Built {
    pub bzimage: PathBuf,
    /// The built source tree, prepared for external modules (`make -C tree M=dir modules`).
    pub tree: PathBuf,
    /// `make kernelrelease`.
    pub release: String,
    /// The cache entry's name: source version and recipe hash.
    pub key: String,
}

fn recipes_dir() -> PathBuf {
    cmd::workspace_root().join("vm-images/recipes")
}

pub fn load_recipe(name: &str) -> Result<Recipe> {
    let path = recipes_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the recipe {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Hash of everything that decides the build besides the source version.
fn recipe_hash(name: &str, recipe: &Recipe) -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    STEPS_VERSION.hash(&mut h);
    std::fs::read(recipes_dir().join(format!("{name}.toml")))?.hash(&mut h);
    let frag = recipes_dir().join(&recipe.fragment);
    std::fs::read(&frag).with_context(|| format!("reading {}", frag.display()))?.hash(&mut h);
    for p in &recipe.patches {
        let path = recipes_dir().join(p);
        p.hash(&mut h);
        std::fs::read(&path).with_context(|| format!("reading the patch {}", path.display()))?.hash(&mut h);
    }
    Ok(format!("{:016x}", h.finish()))
}

fn builds_dir(cache: &Path, name: &str) -> PathBuf {
    cache.join("builds").join(name)
}

fn read_built(dir: &Path) -> Option<Built> {
    if !dir.join(".complete").exists() {
        return None;
    }
    let tree = dir.join("linux");
    let bzimage = tree.join("arch/x86/boot/bzImage");
    let release = std::fs::read_to_string(dir.join("release")).ok()?.trim().to_string();
    let key = dir.file_name()?.to_str()?.to_string();
    bzimage.exists().then_some(Built { bzimage, tree, release, key })
}

/// The newest complete build of the recipe as it is now (same recipe and fragment hash), if any.
/// Needs no package lists: a new source version in the archive does not hide an existing build.
pub fn find(name: &str, cache: &Path) -> Result<Option<Built>> {
    let recipe = load_recipe(name)?;
    let suffix = format!("-{}", recipe_hash(name, &recipe)?);
    let mut found: Vec<(Vec<u64>, Built)> = std::fs::read_dir(builds_dir(cache, name))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_string();
            let version = n.strip_suffix(&suffix)?.to_string();
            if n.starts_with('.') {
                return None;
            }
            read_built(&e.path()).map(|b| (super::manifest::version_key(&version), b))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found.pop().map(|(_, b)| b))
}

fn ensure_host_packages(apt: &Apt) -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("building a kernel needs {missing:?}: run as root, or apt-get install them");
    }
    println!("vm: installing {missing:?} to build the kernel");
    cmd::run(apt.apt_get().args(["install", "-y", "--no-install-recommends"]).args(&missing)).with_context(|| format!("installing {missing:?}"))
}

/// One build step: runs `c` in `dir` with its output in `logs/<step>.log`, and prints its time.
fn step(build: &Path, name: &str, dir: &Path, c: &mut Command) -> Result<()> {
    let logs = build.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    print!("vm build: {name} ... ");
    std::io::Write::flush(&mut std::io::stdout())?;
    let t0 = Instant::now();
    let status = c
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .with_context(|| format!("step {name}: cannot start {:?}", c.get_program()))?;
    let secs = t0.elapsed().as_secs_f64();
    if !status.success() {
        println!("FAILED after {secs:.0} s");
        let tail: Vec<String> = std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(15).map(String::from).collect();
        for l in tail.iter().rev() {
            println!("    {l}");
        }
        bail!("build step `{name}` failed ({status}); its log is {}", log.display());
    }
    println!("{secs:.0} s");
    Ok(())
}

/// What the fragment asks for: (option, wanted on).
fn fragment_options(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("# ").and_then(|r| r.strip_suffix(" is not set")) {
                return rest.starts_with("CONFIG_").then(|| (rest.to_string(), false));
            }
            let (k, v) = l.split_once('=')?;
            (k.starts_with("CONFIG_") && v == "y").then(|| (k.to_string(), true))
        })
        .collect()
}

/// Every option the fragment sets must hold in the final .config: the names of those that do not.
fn unmet(fragment: &str, config: &str) -> Vec<String> {
    let on: std::collections::HashSet<&str> = config.lines().filter_map(|l| l.strip_suffix("=y")).collect();
    fragment_options(fragment)
        .into_iter()
        .filter(|(k, want)| on.contains(k.as_str()) != *want)
        .map(|(k, want)| if want { format!("{k} (wanted =y)") } else { format!("{k} (wanted off)") })
        .collect()
}

/// `cargo xtask vm build NAME`: builds (or finds) the newest source version with the recipe.
pub fn build(name: &str, apt: &Apt, cache: &Path) -> Result<Built> {
    let recipe = load_recipe(name)?;
    let hash = recipe_hash(name, &recipe)?;
    let frag_path = recipes_dir().join(&recipe.fragment);
    let fragment = std::fs::read_to_string(&frag_path)?;

    let t_all = Instant::now();
    let deb = apt.download(&recipe.source, &cache.join("debs"))?;
    let version = cmd::output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| anyhow!("cannot read the version of {}", deb.display()))?;
    let key = format!("{version}-{hash}");
    let dir = builds_dir(cache, name);
    let dest = dir.join(&key);
    if let Some(b) = read_built(&dest) {
        println!("vm build: {name} is built ({}, {}); nothing to do", b.release, dest.display());
        return Ok(b);
    }
    ensure_host_packages(apt)?;
    std::fs::create_dir_all(&dir)?;
    // Partial builds of earlier runs (kept so their logs could be read) go now, unless their
    // process is still running.
    for e in std::fs::read_dir(&dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = n.rsplit_once(".partial-")
            && n.starts_with('.')
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let partial_prefix = format!(".{key}.partial-");
    let tmp = dir.join(format!("{partial_prefix}{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    println!("vm build: {name} from {} {version} in {}", recipe.source, tmp.display());

    // 1. The source: the package holds usr/src/<source>.tar.xz.
    step(&tmp, "extract-deb", &tmp, Command::new("dpkg-deb").arg("-x").arg(&deb).arg("pkg"))?;
    let tarball = std::fs::read_dir(tmp.join("pkg/usr/src"))
        .context("the source package has no usr/src")?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".tar.xz")))
        .ok_or_else(|| anyhow!("no usr/src/*.tar.xz in {}", deb.display()))?;
    step(&tmp, "unpack-source", &tmp, Command::new("tar").arg("-xf").arg(&tarball))?;
    let top = tarball.file_name().unwrap().to_str().unwrap().trim_end_matches(".tar.xz").to_string();
    std::fs::rename(tmp.join(&top), tmp.join("linux")).with_context(|| format!("the tarball has no {top}/ directory"))?;
    std::fs::remove_dir_all(tmp.join("pkg"))?;
    let tree = tmp.join("linux");
    for (i, p) in recipe.patches.iter().enumerate() {
        let path = recipes_dir().join(p);
        let stem = Path::new(p).file_stem().and_then(|s| s.to_str()).unwrap_or("patch");
        step(&tmp, &format!("patch-{:02}-{stem}", i + 1), &tree, Command::new("patch").args(["-p1", "--forward", "--batch", "-i"]).arg(&path))
            .with_context(|| format!("applying the patch {}", path.display()))?;
    }
    if !recipe.patches.is_empty() {
        println!("vm build: {} patches applied", recipe.patches.len());
    }

    // 2. The config.
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    step(&tmp, "defconfig", &tree, Command::new("make").arg("x86_64_defconfig"))?;
    step(&tmp, "kvm_guest.config", &tree, Command::new("make").arg("kvm_guest.config"))?;
    std::fs::copy(&frag_path, tmp.join("fragment.config"))?;
    step(&tmp, "merge-fragment", &tree, Command::new("scripts/kconfig/merge_config.sh").args(["-m", ".config"]).arg(tmp.join("fragment.config")))?;
    step(&tmp, "olddefconfig", &tree, Command::new("make").arg("olddefconfig"))?;
    let config = std::fs::read_to_string(tree.join(".config"))?;
    let missing = unmet(&fragment, &config);
    if !missing.is_empty() {
        bail!(
            "the final .config does not honour the fragment {}: {} (see {} and {}/logs)",
            frag_path.display(),
            missing.join(", "),
            tree.join(".config").display(),
            tmp.display()
        );
    }
    println!("vm build: .config has all {} options of the fragment", fragment_options(&fragment).len());

    // 3. The kernel, and the tree prepared for external modules (Module.symvers included).
    step(&tmp, "build", &tree, Command::new("make").arg(format!("-j{jobs}")).args(["bzImage", "modules", "modules_prepare"]))?;
    let release = cmd::output(Command::new("make").args(["-s", "kernelrelease"]).current_dir(&tree))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("make kernelrelease failed in {}", tree.display()))?;
    std::fs::write(tmp.join("release"), format!("{release}\n"))?;
    std::fs::write(tmp.join(".complete"), b"")?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    println!("vm build: {name} built in {:.0} s: {release}, {}", t_all.elapsed().as_secs_f64(), dest.display());
    read_built(&dest).ok_or_else(|| anyhow!("the finished build in {} is incomplete", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_is_verified_option_by_option() {
        let frag = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_D=y\n";
        assert_eq!(fragment_options(frag), vec![("CONFIG_A".into(), true), ("CONFIG_B".into(), false), ("CONFIG_D".into(), true)]);
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=m\n";
        assert_eq!(unmet(frag, config), vec!["CONFIG_D (wanted =y)".to_string()]);
        assert_eq!(unmet(frag, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_D=y\n"), vec!["CONFIG_B (wanted off)".to_string()]);
    }

    #[test]
    fn the_debug_recipe_asks_for_what_vmalock_needs() {
        let r = load_recipe("debug-6.12").unwrap();
        let frag = std::fs::read_to_string(recipes_dir().join(&r.fragment)).unwrap();
        let opts = fragment_options(&frag);
        for o in ["DEBUG_INFO_BTF", "BPF_SYSCALL", "KPROBES", "FUNCTION_TRACER", "PER_VMA_LOCK", "DEBUG_VM", "PROVE_LOCKING", "MODULES"] {
            assert!(opts.contains(&(format!("CONFIG_{o}"), true)), "{o}");
        }
        assert!(opts.contains(&("CONFIG_MODULE_SIG".into(), false)));
    }
}

#[cfg(test)]
mod find_tests {
    use super::*;

    #[test]
    fn only_complete_builds_of_the_current_recipe_are_found() {
        let cache = std::env::temp_dir().join(format!("vmalock-build-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        assert!(find("debug-6.12", &cache).unwrap().is_none(), "nothing built yet");
        let hash = recipe_hash("debug-6.12", &load_recipe("debug-6.12").unwrap()).unwrap();
        let make = |name: &str, complete: bool| {
            let d = builds_dir(&cache, "debug-6.12").join(name);
            std::fs::create_dir_all(d.join("linux/arch/x86/boot")).unwrap();
            std::fs::write(d.join("linux/arch/x86/boot/bzImage"), b"").unwrap();
            std::fs::write(d.join("release"), format!("{name}\n")).unwrap();
            if complete {
                std::fs::write(d.join(".complete"), b"").unwrap();
            }
        };
        make("6.12.99-1-0000000000000000", true); // another recipe hash
        make(&format!("6.12.200-1-{hash}"), false); // interrupted
        make(&format!(".6.12.117-1-{hash}.partial-1"), true);
        assert!(find("debug-6.12", &cache).unwrap().is_none());
        make(&format!("6.12.9-1-{hash}"), true);
        make(&format!("6.12.117-1-{hash}"), true);
        let b = find("debug-6.12", &cache).unwrap().unwrap();
        assert_eq!(b.key, format!("6.12.117-1-{hash}"));
        let _ = std::fs::remove_dir_all(&cache);
    }
}
