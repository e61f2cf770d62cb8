//! Making the jail and starting flint in it, step by step. A failing step
//! removes what the run created ([`Undo`]) and says what went wrong.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::cli::{Plan, Resource};
use crate::undo::{Undo, UndoError};
use crate::{cgroup, sys};

/// The device nodes made in the jail, each with the host's device number.
pub const DEVICES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/urandom"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0}: exists already in the jail (left from an earlier run? remove the jail's directory)"
    )]
    Exists(PathBuf),
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}: not a character device on this host")]
    NotDevice(PathBuf),
    #[error("{0}: its file system is mounted nodev, so the jail's device nodes could not be opened; choose another --chroot-base-dir")]
    NoDev(PathBuf),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Undo(#[from] UndoError),
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Sys { what, source }
}

/// `host` (absolute) as a path under `root`.
fn inside(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// Copy `from` to `to`, which must not exist; recorded in `undo`.
fn copy_in(from: &Path, to: &Path, undo: &mut Undo) -> Result<(), Error> {
    if to.symlink_metadata().is_ok() {
        return Err(Error::Exists(to.to_owned()));
    }
    undo.mkdir_all(to.parent().unwrap_or(Path::new("/")))?;
    let mut src = File::open(from).map_err(io(from, "read it"))?;
    let mode = src.metadata().map_err(io(from, "read it"))?.mode() & 0o7777;
    let mut dst = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io(to, "create it"))?;
    undo.record(to, false)?;
    std::io::copy(&mut src, &mut dst).map_err(io(to, "write it"))?;
    dst.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o755))
        .map_err(io(to, "set its mode"))
}

/// The device nodes of [`DEVICES`] under `root`, owned by uid:gid.
fn make_devices(root: &Path, uid: u32, gid: u32, undo: &mut Undo) -> Result<(), Error> {
    for host in DEVICES.map(Path::new) {
        let meta = std::fs::metadata(host).map_err(io(host, "read it"))?;
        if !meta.file_type().is_char_device() {
            return Err(Error::NotDevice(host.to_owned()));
        }
        let node = inside(root, host);
        if node.symlink_metadata().is_ok() {
            return Err(Error::Exists(node));
        }
        undo.mkdir_all(node.parent().unwrap_or(root))?;
        sys::mknod_char(&node, 0o600, meta.rdev()).map_err(io(&node, "make the node"))?;
        undo.record(&node, false)?;
        std::os::unix::fs::chown(&node, Some(uid), Some(gid)).map_err(io(&node, "chown it"))?;
    }
    Ok(())
}

/// The files: the root, the exec file and what it needs, the device nodes
/// and the API socket's directory.
fn fill_root(plan: &Plan, runtime: &[PathBuf], undo: &mut Undo) -> Result<(), Error> {
    let root = &plan.root;
    undo.mkdir_all(root)?;
    if sys::is_nodev(root).map_err(io(root, "stat its file system"))? {
        return Err(Error::NoDev(root.clone()));
    }
    copy_in(&plan.exec_file, &root.join(&plan.exec_name), undo)?;
    for file in runtime {
        copy_in(file, &inside(root, file), undo)?;
    }
    make_devices(root, plan.uid, plan.gid, undo)?;
    if let Some(dir) = &plan.api_sock_dir {
        let dir = inside(root, dir);
        if !dir.exists() {
            undo.mkdir_all(&dir)?;
            std::os::unix::fs::chown(&dir, Some(plan.uid), Some(plan.gid))
                .map_err(io(&dir, "chown it"))?;
        }
    }
    Ok(())
}

/// In the parent of a new PID namespace: after the fork, leave the jail's
/// cgroup to flint, write flint's pid, let the child go on and wait for it.
fn parent(plan: &Plan, child: libc::pid_t, go: File, undo: &mut Undo) -> Result<i32, Error> {
    undo.leave_cgroup();
    let pid_file = plan.root.join(format!("{}.pid", plan.exec_name));
    let written = File::options()
        .write(true)
        .create_new(true)
        .open(&pid_file)
        .and_then(|mut f| writeln!(f, "{child}"));
    if let Err(e) = written {
        sys::kill(child);
        let _ = sys::wait(child);
        let _ = std::fs::remove_file(&pid_file);
        return Err(io(&pid_file, "write it")(e));
    }
    // The child removes what was made, the pid file included, if it fails.
    undo.disarm();
    drop(go);
    if plan.daemonize {
        return Ok(0);
    }
    sys::wait(child).map_err(sys("wait for flint"))
}

/// Make the jail and exec flint in it. Returns only on failure, or in a
/// parent that forked (--new-pid-ns, or --daemonize from a process group
/// leader) with the status to exit with.
fn build(
    plan: &Plan,
    runtime: &[PathBuf],
    cg: Option<&Path>,
    undo: &mut Undo,
) -> Result<i32, Error> {
    fill_root(plan, runtime, undo)?;
    let dev_null = if plan.daemonize {
        let p = Path::new("/dev/null");
        Some(
            File::options()
                .read(true)
                .write(true)
                .open(p)
                .map_err(io(p, "open it"))?,
        )
    } else {
        None
    };
    if let Some(cg) = cg {
        cgroup::enter(cg, &plan.parent_cgroup, &plan.id, &plan.cgroups, undo)?;
    }
    if let Some(ns) = &plan.netns {
        sys::join_netns(ns).map_err(io(ns, "join the network namespace"))?;
    }
    if plan.new_pid_ns {
        sys::unshare(libc::CLONE_NEWPID).map_err(sys("unshare(CLONE_NEWPID)"))?;
        let (mut wait_go, go) = sys::pipe().map_err(sys("pipe"))?;
        match sys::fork().map_err(sys("fork"))? {
            Some(child) => {
                drop(wait_go);
                return parent(plan, child, go, undo);
            }
            None => {
                drop(go);
                let mut byte = [0u8; 1];
                // EOF: the parent wrote the pid file (or died).
                let _ = wait_go.read(&mut byte);
                undo.record(&plan.root.join(format!("{}.pid", plan.exec_name)), false)?;
            }
        }
    }
    sys::unshare(libc::CLONE_NEWNS).map_err(sys("unshare(CLONE_NEWNS)"))?;
    let root_fs = Path::new("/");
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    sys::mount(Path::new("none"), root_fs, flags).map_err(sys("make / private"))?;
    let flags = libc::MS_BIND | libc::MS_REC;
    sys::mount(&plan.root, &plan.root, flags).map_err(io(&plan.root, "bind-mount it"))?;
    sys::pivot_into(&plan.root).map_err(io(&plan.root, "pivot_root into it"))?;
    if let Some(null) = dev_null {
        if !sys::setsid().map_err(sys("setsid"))? {
            // A process group leader cannot start a session: go on in a
            // child, which can.
            if sys::fork().map_err(sys("fork"))?.is_some() {
                undo.disarm();
                return Ok(0);
            }
            sys::setsid().map_err(sys("setsid"))?;
        }
        sys::stdio_to(&null).map_err(sys("put stdio on /dev/null"))?;
    }
    for &(res, n) in &plan.limits {
        let (r, name) = match res {
            Resource::Fsize => (libc::RLIMIT_FSIZE, "setrlimit(RLIMIT_FSIZE)"),
            Resource::NoFile => (libc::RLIMIT_NOFILE, "setrlimit(RLIMIT_NOFILE)"),
        };
        sys::set_rlimit(r, n).map_err(sys(name))?;
    }
    sys::drop_privileges(plan.uid, plan.gid).map_err(sys("setgroups/setgid/setuid"))?;
    let exec = Path::new("/").join(&plan.exec_name);
    let e = std::process::Command::new(&exec)
        .args(&plan.exec_args)
        .exec();
    Err(io(&exec, "exec it in the jail")(e))
}

/// Run the plan: on failure, remove what this run made before returning
/// the error.
pub fn run(plan: &Plan, runtime: &[PathBuf], cg: Option<&Path>) -> Result<i32, Error> {
    let mut undo = Undo::default();
    build(plan, runtime, cg, &mut undo).inspect_err(|_| undo.run())
}
