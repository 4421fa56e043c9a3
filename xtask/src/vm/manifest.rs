//! vm-images/kernels.toml: the test kernels.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Kernel {
    pub name: String,
    pub suite: String,
    /// Regex over package names; capture group 1 is `{v}`. Empty for a kernel built here.
    #[serde(default)]
    pub image: String,
    /// A recipe in vm-images/recipes: the kernel is built here by `cargo xtask vm build NAME`,
    /// not downloaded (and never built implicitly by `vm test`).
    #[serde(default)]
    pub build: Option<String>,
    /// Packages for building the test module (`{v}` substituted); empty: no module here.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Build the module chrooted into a root of this suite's packages (the headers packages,
    /// their dependencies and the basic tools, extracted under the cache), for headers whose
    /// compiler or kbuild tools this machine cannot run. None: build on this machine.
    #[serde(default)]
    pub chroot: Option<String>,
    pub about: String,
    /// Hook families `vmalock probe` must report working in this guest.
    #[serde(default)]
    pub expect: Vec<String>,
    /// The integration-test executables (tracer-user/tests/NAME.rs) this guest runs, besides
    /// the module load and `vmalock probe`; empty: all of them. A kernel built with the rules'
    /// bugs put back runs only the suite that expects them (the others assume a sound kernel).
    #[serde(default)]
    pub tests: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    kernel: Vec<Kernel>,
}

pub fn load(root: &Path) -> Result<Vec<Kernel>> {
    let path = root.join("vm-images/kernels.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for k in &m.kernel {
        for t in &k.tests {
            if !root.join("tracer-user/tests").join(format!("{t}.rs")).exists() {
                bail!("{}: tests names {t:?}, but there is no tracer-user/tests/{t}.rs", k.name);
            }
        }
        match (&k.build, k.image.is_empty()) {
            (Some(_), false) => bail!("{}: give either `image` or `build`, not both", k.name),
            (None, true) => bail!("{}: needs `image` (a Debian package) or `build` (a recipe)", k.name),
            (Some(r), true) => {
                let recipe = root.join("vm-images/recipes").join(format!("{r}.toml"));
                if !recipe.exists() {
                    bail!("{}: no recipe {}", k.name, recipe.display());
                }
            }
            (None, false) => {
                regex::Regex::new(&k.image).with_context(|| format!("{}: bad image regex", k.name))?;
            }
        }
    }
    Ok(m.kernel)
}

/// The kernels named on the command line, in manifest order; all of them when none is named.
pub fn select(all: &[Kernel], names: &[String]) -> Result<Vec<Kernel>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    for n in names {
        if !all.iter().any(|k| &k.name == n) {
            let known: Vec<&str> = all.iter().map(|k| k.name.as_str()).collect();
            bail!("no kernel named {n:?} in vm-images/kernels.toml; known: {}", known.join(", "));
        }
    }
    Ok(all.iter().filter(|k| names.contains(&k.name)).cloned().collect())
}

/// Orders version strings like "6.12.111+deb12" or "6.1.0-56" by their numeric parts.
pub fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_parses_and_names_are_checked() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let all = load(root).unwrap();
        assert!(all.iter().any(|k| k.name == "debian-6.12"));
        assert!(select(&all, &["nope".into()]).unwrap_err().to_string().contains("debian-6.12"));
        assert_eq!(select(&all, &["debian-6.12".into()]).unwrap().len(), 1);
        let debug = all.iter().find(|k| k.name == "debug-6.12").unwrap();
        assert_eq!(debug.build.as_deref(), Some("debug-6.12"));
        assert!(debug.image.is_empty());
        assert!(debug.tests.is_empty(), "a sound kernel runs every suite");
        let seed = all.iter().find(|k| k.name == "seed-regressions").unwrap();
        assert_eq!(seed.tests, ["regressions"], "the bugs-put-back kernel runs only the suite that expects them");
        let bad = "[[kernel]]\nname = \"x\"\nsuite = \"s\"\nbuild = \"debug-6.12\"\nabout = \"\"\ntests = [\"nope\"]\n";
        let dir = std::env::temp_dir().join(format!("vmalock-manifest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vm-images")).unwrap();
        std::fs::write(dir.join("vm-images/kernels.toml"), bad).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.contains("no tracer-user/tests/nope.rs"), "{e}");
    }

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("6.12.111+deb12") > version_key("6.12.95+deb12"));
        assert!(version_key("6.1.0-56") > version_key("6.1.0-9"));
    }
}
