//! Files vmalock writes for people to keep or share (traces, exports): private to the user.
//!
//! A trace names tasks and (unless scrubbed) kernel pointers, so it is created 0600. vmalock
//! runs as root, usually through sudo: the file is then handed to the user who ran sudo, who
//! could otherwise not even delete it from their own directory's point of view of ownership.

use std::{fs::File, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::{Context as _, Result};

/// Creates (or truncates) `path` with mode 0600 and, under sudo, chowns it to `SUDO_UID`/`SUDO_GID`.
pub fn create_private(path: &Path) -> Result<File> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    create_owned(path, sudo_owner(euid, |k| std::env::var(k).ok()))
}

/// Creates `path` 0600, owned by `owner` (uid, gid) when given.
fn create_owned(path: &Path, owner: Option<(u32, u32)>) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An existing file keeps its old mode through O_TRUNC: make it private too.
    use std::os::unix::fs::PermissionsExt as _;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (chmod 0600)", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to the sudo user (uid {uid})", path.display()))?;
    }
    Ok(f)
}

/// The invoking user when running as root (`euid` 0) under sudo.
fn sudo_owner(euid: u32, env: impl Fn(&str) -> Option<String>) -> Option<(u32, u32)> {
    if euid != 0 {
        return None;
    }
    let uid = env("SUDO_UID")?.parse().ok()?;
    let gid = env("SUDO_GID")?.parse().ok()?;
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[test]
    fn new_and_existing_files_end_up_0600() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        create_private(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
        let old = dir.path().join("old");
        std::fs::write(&old, "secret").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&old).unwrap();
        let m = std::fs::metadata(&old).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.len(), 0, "truncated");
    }

    #[test]
    fn sudo_user_is_read_only_for_root() {
        let env = |k: &str| match k {
            "SUDO_UID" => Some("1000".to_string()),
            "SUDO_GID" => Some("1001".to_string()),
            _ => None,
        };
        assert_eq!(sudo_owner(0, env), Some((1000, 1001)));
        assert_eq!(sudo_owner(1000, env), None, "not root: nothing to hand over");
        assert_eq!(sudo_owner(0, |_| None), None, "root without sudo keeps the file");
        assert_eq!(sudo_owner(0, |k| (k == "SUDO_UID").then(|| "x".into())), None);
    }

    #[test]
    fn the_file_goes_to_the_sudo_user() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let why = "the_file_goes_to_the_sudo_user: needs root to chown";
            eprintln!("SKIPPED {why}");
            if let Ok(p) = std::env::var("VMALOCK_SKIP_LOG")
                && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p)
            {
                use std::io::Write as _;
                let _ = f.write_all(format!("{why}\n").as_bytes());
            }
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        create_owned(&p, Some((4321, 4322))).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.permissions().mode() & 0o777), (4321, 4322, 0o600));
    }
}
