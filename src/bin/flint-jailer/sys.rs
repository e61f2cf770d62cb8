//! Thin wrappers over the system calls the jail needs (libc; nix is not a
//! dependency of flint). Each returns the OS error as an io::Error.

use std::ffi::CString;
use std::fs::File;
use std::io::{Error, Result};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn check(r: libc::c_int) -> Result<libc::c_int> {
    if r < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(Error::other)
}

/// unshare(2) with CLONE_* `flags`.
pub fn unshare(flags: libc::c_int) -> Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Join the network namespace of the file `ns`.
pub fn join_netns(ns: &Path) -> Result<()> {
    let f = File::open(ns)?;
    // SAFETY: a valid descriptor owned by `f` for the call.
    check(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// mount(2) without a source, type or data (propagation changes and bind
/// mounts).
pub fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> Result<()> {
    let (s, t) = (cstr(source)?, cstr(target)?);
    // SAFETY: NUL-terminated strings that outlive the call; null type and
    // data are allowed for these flags.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(r).map(drop)
}

/// Make `root` the process's `/`: pivot_root(".", ".") stacks the old root
/// on the new one, and a lazy unmount detaches it.
pub fn pivot_into(root: &Path) -> Result<()> {
    std::env::set_current_dir(root)?;
    let dot = c".";
    // SAFETY: NUL-terminated constant strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)?;
    // SAFETY: as above.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })?;
    std::env::set_current_dir("/")
}

/// A character device node at `path` with `mode` and device number `rdev`.
pub fn mknod_char(path: &Path, mode: u32, rdev: u64) -> Result<()> {
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | mode, rdev) }).map(drop)
}

/// Whether the file system holding `path` is mounted nodev (device nodes
/// on it cannot be opened).
pub fn is_nodev(path: &Path) -> Result<bool> {
    let p = cstr(path)?;
    // SAFETY: statvfs is plain data; zeroes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    Ok(st.f_flag & libc::ST_NODEV != 0)
}

/// setrlimit(2), soft and hard limit alike.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, n: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: a valid pointer to a local rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// Drop to `uid`:`gid` with no supplementary groups, and check that it
/// stuck (real, effective and saved ids; no way back to root).
pub fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: an empty list; no pointer is read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: valid out pointers to locals.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    let uids = [r, e, s];
    // SAFETY: valid out pointers to locals.
    check(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })?;
    let gids = [r, e, s];
    // SAFETY: a zero-length query reads no buffer.
    let groups = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if uids != [uid; 3] || gids != [gid; 3] || groups != 0 {
        return Err(Error::other(format!(
            "the ids did not stick: uids {uids:?}, gids {gids:?}, {groups} groups"
        )));
    }
    if uid != 0 {
        // SAFETY: plain integer argument; it must fail.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(Error::other("setuid(0) still succeeds"));
        }
    }
    Ok(())
}

/// fork(2): Some(child pid) in the parent, None in the child.
pub fn fork() -> Result<Option<libc::pid_t>> {
    // SAFETY: the jailer is single-threaded, so the child may go on
    // running ordinary code.
    let pid = check(unsafe { libc::fork() })?;
    Ok((pid != 0).then_some(pid))
}

/// Wait for `pid`; its exit status, or 128 + the signal that ended it.
pub fn wait(pid: libc::pid_t) -> Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: a valid out pointer to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Ok(128 + libc::WTERMSIG(status))
    }
}

/// A new session; false if the process leads a process group (setsid is
/// refused then).
pub fn setsid() -> Result<bool> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } >= 0 {
        return Ok(true);
    }
    let e = Error::last_os_error();
    if e.raw_os_error() == Some(libc::EPERM) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Put `file` on stdin, stdout and stderr.
pub fn stdio_to(file: &File) -> Result<()> {
    for fd in 0..3 {
        // SAFETY: a valid descriptor owned by `file`; 0-2 may be replaced.
        check(unsafe { libc::dup2(file.as_raw_fd(), fd) })?;
    }
    Ok(())
}

/// kill(2) with SIGKILL.
pub fn kill(pid: libc::pid_t) {
    // SAFETY: plain integer arguments, our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(File, File)> {
    use std::os::unix::io::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: a valid pointer to two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}
