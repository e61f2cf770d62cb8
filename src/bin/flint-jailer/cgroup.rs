//! The jail's cgroup (v2 only): `<root>/<parent>/<id>`, with the limits
//! given by --cgroup, and the controllers they need enabled in every
//! parent's cgroup.subtree_control.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::undo::{Undo, UndoError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?}: expected FILE=VALUE, such as memory.max=268435456")]
    Syntax(String),
    #[error("{0:?}: not a cgroup file name (CONTROLLER.KEY, such as pids.max or hugetlb.2MB.max)")]
    FileName(String),
    #[error(
        "no cgroup v2 (cgroup2) file system is mounted (see /proc/mounts); \
         flint-jailer supports cgroup v2 only"
    )]
    NoHierarchy,
    #[error(
        "{file}: the cgroup v2 hierarchy offers no {controller} controller (it offers: {offered}); \
         on a host that binds it to a cgroup v1 hierarchy it cannot be used"
    )]
    Controller {
        controller: String,
        file: PathBuf,
        offered: String,
    },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}: the cgroup exists already (a jail with this id ran before: rmdir it when its flint has exited)")]
    Exists(PathBuf),
    #[error(transparent)]
    Undo(#[from] UndoError),
}

/// One --cgroup FILE=VALUE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub file: String,
    pub value: String,
    /// The controller FILE belongs to; None for the core `cgroup.*` files.
    pub controller: Option<String>,
}

/// Parse FILE=VALUE; FILE is CONTROLLER.KEY (`cgroup.*` needs no
/// controller).
pub fn parse_setting(s: &str) -> Result<Setting, Error> {
    let (file, value) = s
        .split_once('=')
        .ok_or_else(|| Error::Syntax(s.to_string()))?;
    let (controller, key) = file
        .split_once('.')
        .ok_or_else(|| Error::FileName(file.to_string()))?;
    let ok = controller
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !ok || controller.is_empty() || key.is_empty() || key.ends_with('.') {
        return Err(Error::FileName(file.to_string()));
    }
    Ok(Setting {
        file: file.to_string(),
        value: value.to_string(),
        controller: (controller != "cgroup").then(|| controller.to_string()),
    })
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/mounts' text:
/// /sys/fs/cgroup if it is cgroup2, else the first cgroup2 mount.
pub fn find_root(mounts: &str) -> Option<PathBuf> {
    let roots: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1])
        })
        .collect();
    let best = roots
        .iter()
        .find(|r| **r == "/sys/fs/cgroup")
        .or(roots.first())?;
    Some(PathBuf::from(best))
}

/// This host's cgroup v2 mount.
pub fn host_root() -> Option<PathBuf> {
    find_root(&std::fs::read_to_string("/proc/mounts").ok()?)
}

fn controllers(settings: &[Setting]) -> BTreeSet<&str> {
    settings
        .iter()
        .filter_map(|s| s.controller.as_deref())
        .collect()
}

/// Check that the hierarchy at `root` offers every controller `settings`
/// need.
pub fn check_controllers(root: Option<&Path>, settings: &[Setting]) -> Result<(), Error> {
    let root = root.ok_or(Error::NoHierarchy)?;
    let file = root.join("cgroup.controllers");
    let offered = std::fs::read_to_string(&file).map_err(|source| Error::Io {
        path: file.clone(),
        what: "cannot read it",
        source,
    })?;
    let have: BTreeSet<&str> = offered.split_whitespace().collect();
    for c in controllers(settings) {
        if !have.contains(c) {
            return Err(Error::Controller {
                controller: c.to_string(),
                file,
                offered: offered.trim().to_string(),
            });
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str, what: &'static str) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        what,
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// The cgroup this process is in now (cgroup v2's `0::` line), as a
/// directory under `root`.
fn current(root: &Path) -> Result<PathBuf, Error> {
    let path = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        what: "cannot read it",
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    Ok(root.join(rel.trim_start_matches('/')))
}

/// Make `<root>/<parent>/<id>`, write the settings into it and move this
/// process there. Every directory made is recorded in `undo`, and so is
/// the way back to the cgroup the process came from.
pub fn enter(
    root: &Path,
    parent: &Path,
    id: &str,
    settings: &[Setting],
    undo: &mut Undo,
) -> Result<PathBuf, Error> {
    let home = current(root)?;
    let enable: String = controllers(settings)
        .iter()
        .map(|c| format!("+{c} "))
        .collect();
    let mut dir = root.to_owned();
    for part in parent.components() {
        if !enable.is_empty() {
            let f = dir.join("cgroup.subtree_control");
            write(&f, enable.trim_end(), "cannot enable the controllers")?;
        }
        dir.push(part);
        if !dir.is_dir() {
            undo.mkdir(&dir, 0o755)?;
        }
    }
    if !enable.is_empty() {
        let f = dir.join("cgroup.subtree_control");
        write(&f, enable.trim_end(), "cannot enable the controllers")?;
    }
    dir.push(id);
    if dir.exists() {
        return Err(Error::Exists(dir));
    }
    undo.mkdir(&dir, 0o755)?;
    for s in settings {
        write(&dir.join(&s.file), &s.value, "cannot write the value")?;
    }
    // Opened before the jail hides /sys: the way out of the cgroup, so
    // that a failure later can remove it.
    let procs = home.join("cgroup.procs");
    let back = File::options()
        .write(true)
        .open(&procs)
        .map_err(|source| Error::Io {
            path: procs,
            what: "cannot open it",
            source,
        })?;
    write(
        &dir.join("cgroup.procs"),
        "0",
        "cannot move the jailer into it",
    )?;
    undo.left_cgroup(back);
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        let s = parse_setting("cpu.max=50000 100000").unwrap();
        assert_eq!(
            (s.file.as_str(), s.value.as_str(), s.controller.as_deref()),
            ("cpu.max", "50000 100000", Some("cpu"))
        );
        let s = parse_setting("memory.max=268435456").unwrap();
        assert_eq!(s.controller.as_deref(), Some("memory"));
        let s = parse_setting("hugetlb.2MB.max=0").unwrap();
        assert_eq!(s.controller.as_deref(), Some("hugetlb"));
        let s = parse_setting("cgroup.max.descendants=0").unwrap();
        assert_eq!(s.controller, None);
        assert_eq!(parse_setting("pids.max=").unwrap().value, "");
        for bad in [
            "pids.max",
            "max=3",
            ".max=1",
            "pids.=1",
            "../x.max=1",
            "a/b.max=1",
            "Pids.max=1",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_v2_mount() {
        let hybrid = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(find_root(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let unified = "none /x cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(find_root(unified), Some("/sys/fs/cgroup".into()));
        assert_eq!(find_root("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn a_missing_controller_is_named() {
        let dir = std::env::temp_dir().join(format!("flint-jailer-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let s = |t: &str| vec![parse_setting(t).unwrap()];
        assert!(check_controllers(Some(&dir), &s("memory.max=1")).is_ok());
        assert!(check_controllers(Some(&dir), &s("cgroup.max.depth=1")).is_ok());
        let e = check_controllers(Some(&dir), &s("pids.max=1")).unwrap_err();
        assert!(e.to_string().contains("no pids controller"), "{e}");
        assert!(matches!(
            check_controllers(None, &s("pids.max=1")),
            Err(Error::NoHierarchy)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
