//! The lab runner (`resources/lab/lab`): a command's exit status, its
//! stdout and stderr come back apart, a timeout is reported, and a command
//! that cannot start says so. These boot the lab VM (QEMU's TCG with SVM),
//! which needs no KVM on this host, so they run everywhere.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn lab() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("resources/lab/lab")
}

fn lab_run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(lab())
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .env("FLINT_LAB_PROBE", "from-the-host")
        .output()
        .expect("run resources/lab/lab");
    (out, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn status_stdout_stderr_working_directory_and_environment_come_through() {
    let script = "echo out-1; echo err-1 >&2; echo out-2; pwd; \
                  echo probe=$FLINT_LAB_PROBE lab=$FLINT_LAB; \
                  test -c /dev/kvm && echo kvm-present; exit 42";
    let (out, _) = lab_run(&["--", "sh", "-c", script]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(42), "{context}");
    let cwd = std::env::current_dir().unwrap();
    let expected = format!(
        "out-1\nout-2\n{}\nprobe=from-the-host lab=1\nkvm-present\n",
        cwd.display()
    );
    assert_eq!(stdout, expected, "{context}");
    assert!(stderr.contains("err-1\n"), "{context}");
    assert!(!stderr.contains("out-"), "{context}");
    // The lab kernel's own messages stay in its console log.
    assert!(
        !stdout.contains("Linux version") && !stderr.contains("Linux version"),
        "{context}"
    );
}

#[test]
fn files_written_in_the_lab_are_on_the_host_when_it_returns() {
    let path = std::env::temp_dir().join(format!("flint-lab-test-{}.bin", std::process::id()));
    let cmd = format!(
        "head -c 1048576 /dev/urandom > {0} && sha256sum {0}",
        path.display()
    );
    let (out, _) = lab_run(&["--", "sh", "-c", &cmd]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let data = std::fs::read(&path).expect("the file the lab wrote");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(data.len(), 1 << 20);
    let host = Command::new("sha256sum")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut host = host.unwrap();
    use std::io::Write;
    host.stdin.take().unwrap().write_all(&data).unwrap();
    let sum = text(&host.wait_with_output().unwrap().stdout);
    let sum = sum.split_whitespace().next().unwrap().to_string();
    assert!(
        text(&out.stdout).starts_with(&sum),
        "{} vs {sum}",
        text(&out.stdout)
    );
}

#[test]
fn a_timeout_stops_the_lab_and_says_what_was_running() {
    // (How long this takes is not checked: another test's lab run may hold
    // the one-lab-at-a-time lock first; the timeout starts with the VM.)
    let (out, _) = lab_run(&[
        "--timeout",
        "45",
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 1000",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(124),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stdout, "started\n", "{stderr}");
    assert!(
        stderr.contains(
            "lab: timeout: sh -c 'echo started; exec sleep 1000' still running after 45 s"
        ),
        "{stderr}"
    );
}

#[test]
fn a_command_that_cannot_start_is_reported() {
    let (out, _) = lab_run(&["--", "no-such-command-flint", "x"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{stderr}");
    assert!(
        stderr.contains("lab: no-such-command-flint: command not found"),
        "{stderr}"
    );
}

#[test]
fn bad_usage_is_refused_before_anything_starts() {
    for (args, needle) in [
        (
            &["--cpus", "0", "--", "true"][..],
            "not a positive number: 0",
        ),
        (&["--bogus", "--", "true"][..], "unknown option --bogus"),
        (&[][..], "no command given"),
    ] {
        let (out, took) = lab_run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
}
