//! flint-jailer's flags (Firecracker's jailer's names) and their checks,
//! which all run before anything is created.

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use clap::Parser;

use crate::cgroup::{self, Setting};

/// Start flint in a jail: a chroot (pivot_root) of its own under
/// --chroot-base-dir, with only /dev/kvm, /dev/net/tun and /dev/urandom,
/// in a cgroup v2 of its own, optionally in a network and a PID namespace,
/// as an unprivileged user. Paths given to flint after `--` are paths
/// inside the jail.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  flint-jailer --id vm1 \
--exec-file /usr/local/bin/flint --uid 1000 --gid 1000 \\\n    \
--cgroup memory.max=268435456 -- --kernel /vmlinux"
)]
pub struct Cli {
    /// The jail's id: 1 to 64 letters, digits or `-`. Names the chroot
    /// (<base>/<exec name>/<id>/root) and the cgroup (<parent>/<id>).
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// The flint binary to run; it is copied into the jail (with its ELF
    /// interpreter and shared libraries).
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The user id flint runs as; 0 only with --allow-root.
    #[arg(long, value_name = "N")]
    pub uid: u32,
    /// The group id flint runs as (its only group); 0 only with
    /// --allow-root.
    #[arg(long, value_name = "N")]
    pub gid: u32,
    /// An existing directory under which the jail is made:
    /// <DIR>/<exec file name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// Join this network namespace (a file such as /var/run/netns/NAME)
    /// before entering the jail.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// The cgroup version; only 2 (the unified hierarchy) is supported.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub cgroup_version: u32,
    /// Write VALUE into FILE of the jail's cgroup, e.g. `memory.max=268435456`,
    /// `pids.max=64`, `cpu.max=50000 100000`; repeatable. FILE's prefix
    /// (memory, pids, cpu...) must be a controller the cgroup v2 hierarchy
    /// offers; the jailer enables it in the parents' cgroup.subtree_control.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<String>,
    /// The cgroup (a path relative to the cgroup v2 root) under which the
    /// jail's cgroup <NAME>/<id> is made; created if missing.
    #[arg(long, value_name = "NAME", default_value = "flint")]
    pub parent_cgroup: String,
    /// Set a resource limit (soft and hard) before flint starts:
    /// `fsize=BYTES` (largest file flint may write) or `no-file=N` (open
    /// file descriptors); repeatable.
    #[arg(long = "resource-limit", value_name = "RES=N")]
    pub resource_limits: Vec<String>,
    /// Detach: a new session (setsid), stdin, stdout and stderr on
    /// /dev/null.
    #[arg(long)]
    pub daemonize: bool,
    /// Run flint as PID 1 of a new PID namespace; the jailer writes its
    /// pid (as the host sees it) to <root>/<exec file name>.pid and waits
    /// for it, exiting with its status (at once with --daemonize).
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Allow --uid 0 or --gid 0 (refused without it).
    #[arg(long)]
    pub allow_root: bool,
    /// flint's own arguments, after `--`, passed unchanged.
    #[arg(last = true, value_name = "FLINT ARGS")]
    pub exec_args: Vec<OsString>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--id {0:?}: an id is 1 to 64 letters, digits or '-'")]
    Id(String),
    #[error("--exec-file {0}: {1}")]
    ExecFile(PathBuf, String),
    #[error("--chroot-base-dir {0}: {1}")]
    BaseDir(PathBuf, String),
    #[error("--{0} 0: running flint as root needs --allow-root")]
    Root(&'static str),
    #[error("--{0} 4294967295: (uid_t)-1 means \"unchanged\" to the kernel, not an id")]
    MinusOne(&'static str),
    #[error("--cgroup-version {0}: only cgroup version 2 is supported")]
    CgroupVersion(u32),
    #[error("--parent-cgroup {0:?}: a relative cgroup path without '..' is needed")]
    ParentCgroup(String),
    #[error("--cgroup: {0}")]
    Cgroup(String),
    #[error("--netns {0}: {1}")]
    Netns(PathBuf, String),
    #[error("--resource-limit {0:?}: {1}")]
    ResourceLimit(String, String),
}

/// A resource limit flint-jailer knows (Firecracker's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// RLIMIT_FSIZE.
    Fsize,
    /// RLIMIT_NOFILE.
    NoFile,
}

/// Everything checked: what [`crate::jail`] carries out.
#[derive(Debug)]
pub struct Plan {
    pub id: String,
    /// The exec file, absolute.
    pub exec_file: PathBuf,
    /// Its file name: the jail's /<name> and the pid file's stem.
    pub exec_name: String,
    pub uid: u32,
    pub gid: u32,
    /// <base>/<exec name>/<id>/root, absolute.
    pub root: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroups: Vec<Setting>,
    pub parent_cgroup: PathBuf,
    pub limits: Vec<(Resource, u64)>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    /// The directory (inside the jail) of flint's --api-sock, made for the
    /// uid when missing.
    pub api_sock_dir: Option<PathBuf>,
    pub exec_args: Vec<OsString>,
}

/// Firecracker's rule for jail ids: 1 to 64 ASCII letters, digits or '-'.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `RES=N` of --resource-limit.
pub fn parse_limit(s: &str) -> Result<(Resource, u64), Error> {
    let err = |m: &str| Error::ResourceLimit(s.to_string(), m.to_string());
    let (name, value) = s.split_once('=').ok_or_else(|| err("expected RES=N"))?;
    let res = match name {
        "fsize" => Resource::Fsize,
        "no-file" => Resource::NoFile,
        _ => return Err(err("unknown resource; known: fsize, no-file")),
    };
    let n = value
        .parse()
        .map_err(|_| err("the limit must be a non-negative integer"))?;
    Ok((res, n))
}

/// A --parent-cgroup value as a relative path of plain names.
pub fn parse_parent_cgroup(s: &str) -> Result<PathBuf, Error> {
    let p = Path::new(s);
    let plain = !s.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(p.to_owned())
    } else {
        Err(Error::ParentCgroup(s.to_string()))
    }
}

/// The value of flint's --api-sock among its arguments, if any.
pub fn api_sock(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--" {
            return None;
        }
        if a == "--api-sock" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--api-sock=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The directory inside the jail that holds `sock` (relative paths are
/// relative to the jail's /, flint's working directory there).
fn sock_dir(sock: &Path) -> Option<PathBuf> {
    let abs = Path::new("/").join(sock);
    let dir = abs.parent()?;
    (dir != Path::new("/")).then(|| dir.to_owned())
}

fn check_exec_file(path: &Path) -> Result<(PathBuf, String), Error> {
    let err = |m: String| Error::ExecFile(path.to_owned(), m);
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not executable".into()));
    }
    let abs = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .ok_or_else(|| err("its file name must be plain UTF-8".into()))?;
    Ok((abs, name.to_string()))
}

fn check_base_dir(dir: &Path) -> Result<PathBuf, Error> {
    let err = |m: String| Error::BaseDir(dir.to_owned(), m);
    let meta = std::fs::metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    std::fs::canonicalize(dir).map_err(|e| err(e.to_string()))
}

fn check_netns(path: &Path) -> Result<(), Error> {
    let err = |m: &str| Error::Netns(path.to_owned(), m.to_string());
    let meta = std::fs::metadata(path).map_err(|e| err(&e.to_string()))?;
    if meta.is_dir() || meta.file_type().is_char_device() {
        return Err(err("not a network namespace file"));
    }
    Ok(())
}

impl Cli {
    /// Check every flag, in the order the jail is made; nothing is
    /// created. `cgroup_root` is the cgroup v2 mount (None when there is
    /// none), needed only when --cgroup is given.
    pub fn plan(self, cgroup_root: Option<&Path>) -> Result<Plan, Error> {
        if !valid_id(&self.id) {
            return Err(Error::Id(self.id));
        }
        let (exec_file, exec_name) = check_exec_file(&self.exec_file)?;
        let base = check_base_dir(&self.chroot_base_dir)?;
        if self.uid == u32::MAX {
            return Err(Error::MinusOne("uid"));
        }
        if self.gid == u32::MAX {
            return Err(Error::MinusOne("gid"));
        }
        if self.uid == 0 && !self.allow_root {
            return Err(Error::Root("uid"));
        }
        if self.gid == 0 && !self.allow_root {
            return Err(Error::Root("gid"));
        }
        if self.cgroup_version != 2 {
            return Err(Error::CgroupVersion(self.cgroup_version));
        }
        let parent_cgroup = parse_parent_cgroup(&self.parent_cgroup)?;
        let cgroups = self
            .cgroups
            .iter()
            .map(|s| cgroup::parse_setting(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Cgroup(e.to_string()))?;
        if !cgroups.is_empty() {
            cgroup::check_controllers(cgroup_root, &cgroups)
                .map_err(|e| Error::Cgroup(e.to_string()))?;
        }
        if let Some(ns) = &self.netns {
            check_netns(ns)?;
        }
        let limits = self
            .resource_limits
            .iter()
            .map(|s| parse_limit(s))
            .collect::<Result<Vec<_>, _>>()?;
        let root = base.join(&exec_name).join(&self.id).join("root");
        Ok(Plan {
            id: self.id,
            exec_file,
            exec_name,
            uid: self.uid,
            gid: self.gid,
            root,
            netns: self.netns,
            cgroups,
            parent_cgroup,
            limits,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            api_sock_dir: api_sock(&self.exec_args).and_then(|s| sock_dir(&s)),
            exec_args: self.exec_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(extra: &[&str]) -> Result<Cli, clap::Error> {
        let me = std::env::current_exe().unwrap();
        let base = std::env::temp_dir();
        let mut args = vec![
            "flint-jailer".to_string(),
            "--id".into(),
            "vm-1".into(),
            "--exec-file".into(),
            me.display().to_string(),
            "--uid".into(),
            "65534".into(),
            "--gid".into(),
            "65534".into(),
            "--chroot-base-dir".into(),
            base.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Cli::try_parse_from(args)
    }

    fn plan(extra: &[&str]) -> Result<Plan, Error> {
        cli(extra).unwrap().plan(None)
    }

    #[test]
    fn ids() {
        assert!(valid_id("vm-1"));
        assert!(valid_id(&"a".repeat(64)));
        for bad in ["", "a/b", "..", "a_b", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        let mut c = cli(&[]).unwrap();
        c.id = "../x".into();
        assert_eq!(c.plan(None).unwrap_err(), Error::Id("../x".into()));
    }

    #[test]
    fn a_good_command_line_plans_the_jail() {
        let p = plan(&[
            "--resource-limit",
            "no-file=128",
            "--",
            "--kernel",
            "/vmlinux",
            "--api-sock",
            "run/api.sock",
        ])
        .unwrap();
        let name = p.exec_name.clone();
        assert_eq!(p.root, std::env::temp_dir().join(name).join("vm-1/root"));
        assert_eq!(p.limits, vec![(Resource::NoFile, 128)]);
        assert_eq!(p.api_sock_dir, Some(PathBuf::from("/run")));
        assert_eq!(p.exec_args.len(), 4);
        assert_eq!(p.parent_cgroup, PathBuf::from("flint"));
    }

    #[test]
    fn root_needs_the_flag() {
        let with = |uid, gid, allow| {
            let mut c = cli(&[]).unwrap();
            (c.uid, c.gid, c.allow_root) = (uid, gid, allow);
            c.plan(None)
        };
        assert_eq!(with(0, 1, false).unwrap_err(), Error::Root("uid"));
        assert_eq!(with(1, 0, false).unwrap_err(), Error::Root("gid"));
        assert!(with(0, 0, true).is_ok());
        assert_eq!(with(u32::MAX, 1, true).unwrap_err(), Error::MinusOne("uid"));
        assert_eq!(with(1, u32::MAX, true).unwrap_err(), Error::MinusOne("gid"));
    }

    #[test]
    fn help_explains_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.starts_with("Start flint in a jail"), "{help}");
        for flag in [
            "--id",
            "--exec-file",
            "--uid",
            "--gid",
            "--chroot-base-dir",
            "--netns",
            "--cgroup-version",
            "--cgroup",
            "--parent-cgroup",
            "--resource-limit",
            "--daemonize",
            "--new-pid-ns",
            "--allow-root",
            "FLINT ARGS",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
    }

    #[test]
    fn only_cgroup_v2() {
        let e = plan(&["--cgroup-version", "1"]).unwrap_err();
        assert_eq!(e, Error::CgroupVersion(1));
        assert!(e.to_string().contains("only cgroup version 2"));
    }

    #[test]
    fn resource_limits() {
        assert_eq!(parse_limit("fsize=1024"), Ok((Resource::Fsize, 1024)));
        assert_eq!(parse_limit("no-file=64"), Ok((Resource::NoFile, 64)));
        for bad in ["fsize", "nofile=1", "fsize=-1", "fsize=1k", "=3"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_that_are_not_what_they_must_be() {
        let mut c = cli(&[]).unwrap();
        c.chroot_base_dir = "/nonexistent-flint-base".into();
        let e = c.plan(None).unwrap_err().to_string();
        assert!(
            e.contains("--chroot-base-dir /nonexistent-flint-base"),
            "{e}"
        );
        let plain = std::env::temp_dir().join(format!("flint-jailer-x-{}", std::process::id()));
        std::fs::write(&plain, "").unwrap();
        let mut c = cli(&[]).unwrap();
        c.exec_file = plain.clone();
        let e = c.plan(None).unwrap_err().to_string();
        std::fs::remove_file(&plain).unwrap();
        assert!(e.contains("not executable"), "{e}");
        let mut c = cli(&[]).unwrap();
        c.exec_file = "/tmp".into();
        assert!(c
            .plan(None)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let e = plan(&["--netns", "/nonexistent-ns"]).unwrap_err();
        assert!(e.to_string().starts_with("--netns /nonexistent-ns"), "{e}");
    }

    #[test]
    fn parent_cgroups() {
        assert_eq!(parse_parent_cgroup("a/b"), Ok(PathBuf::from("a/b")));
        for bad in ["", "/abs", "../up", "a/../b", "."] {
            assert!(parse_parent_cgroup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_sock_dirs() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            api_sock(&args(&["--api-sock", "a.sock"])),
            Some("a.sock".into())
        );
        assert_eq!(
            api_sock(&args(&["--api-sock=/run/x"])),
            Some("/run/x".into())
        );
        assert_eq!(api_sock(&args(&["--kernel", "k"])), None);
        assert_eq!(sock_dir(Path::new("a.sock")), None);
        assert_eq!(sock_dir(Path::new("run/a.sock")), Some("/run".into()));
        assert_eq!(sock_dir(Path::new("/run/f/a.sock")), Some("/run/f".into()));
    }
}
