//! What this run created, so that a failure removes exactly that (never
//! what was there before). Entries hold an open descriptor of their parent
//! directory, so they can be removed after the jail hides the host's paths.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("{path}: cannot create it: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot open its directory: {source}")]
    Parent {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Created {
    parent: File,
    name: CString,
    dir: bool,
    shown: PathBuf,
}

/// The undo list; [`Undo::run`] removes in reverse order of creation.
#[derive(Default)]
pub struct Undo {
    created: Vec<Created>,
    /// cgroup.procs of the cgroup the process came from, once it left it.
    back: Option<File>,
}

impl Undo {
    /// Record `path`, just created by this run (a directory if `dir`).
    pub fn record(&mut self, path: &Path, dir: bool) -> Result<(), UndoError> {
        let parent_path = path.parent().unwrap_or(Path::new("/"));
        let parent = File::open(parent_path).map_err(|source| UndoError::Parent {
            path: path.to_owned(),
            source,
        })?;
        let name = path.file_name().unwrap_or_default().as_bytes();
        self.created.push(Created {
            parent,
            name: CString::new(name).expect("a path component has no NUL"),
            dir,
            shown: path.to_owned(),
        });
        Ok(())
    }

    /// Make directory `path` with `mode` and record it.
    pub fn mkdir(&mut self, path: &Path, mode: u32) -> Result<(), UndoError> {
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(|source| UndoError::Create {
                path: path.to_owned(),
                source,
            })?;
        self.record(path, true)
    }

    /// Make the missing directories of `path` (absolute), recording each.
    pub fn mkdir_all(&mut self, path: &Path) -> Result<(), UndoError> {
        let mut at = PathBuf::new();
        for part in path.components() {
            at.push(part);
            if !at.exists() {
                self.mkdir(&at, 0o755)?;
            }
        }
        Ok(())
    }

    /// The process moved into a new cgroup; `back` returns it to the old
    /// one (so the new one can be removed).
    pub fn left_cgroup(&mut self, back: File) {
        self.back = Some(back);
    }

    /// Move the process back to the cgroup it came from (the jail's
    /// cgroup stays recorded, for the process that stays in it).
    pub fn leave_cgroup(&mut self) {
        if let Some(back) = self.back.as_mut() {
            if let Err(e) = back.write_all(b"0") {
                eprintln!("flint-jailer: cannot leave the jail's cgroup: {e}");
            }
        }
    }

    /// Forget everything: the jail is complete.
    pub fn disarm(&mut self) {
        self.created.clear();
        self.back = None;
    }

    /// Remove what was created, newest first; report what could not be.
    pub fn run(&mut self) {
        if let Some(mut back) = self.back.take() {
            if let Err(e) = back.write_all(b"0") {
                eprintln!("flint-jailer: cannot leave the jail's cgroup: {e}");
            }
        }
        while let Some(c) = self.created.pop() {
            let flags = if c.dir { libc::AT_REMOVEDIR } else { 0 };
            // SAFETY: a valid directory descriptor and a NUL-terminated
            // name, both owned by `c` for the call.
            let r = unsafe { libc::unlinkat(c.parent.as_raw_fd(), c.name.as_ptr(), flags) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                eprintln!("flint-jailer: cannot remove {}: {e}", c.shown.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_what_it_made() {
        let base = std::env::temp_dir().join(format!("flint-jailer-undo-{}", std::process::id()));
        std::fs::create_dir_all(base.join("old")).unwrap();
        let mut undo = Undo::default();
        undo.mkdir_all(&base.join("old/a/b")).unwrap();
        std::fs::write(base.join("old/a/b/f"), "x").unwrap();
        undo.record(&base.join("old/a/b/f"), false).unwrap();
        undo.run();
        assert!(base.join("old").is_dir());
        assert!(!base.join("old/a").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
