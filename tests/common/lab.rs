//! The tests of one test file that run in the lab VM on a kvm_pvm host,
//! all in one lab run.
//!
//! A lab VM takes about 20 s to boot, and the lab boots the default Linux
//! guest in 5-15 s where this host's emulating KVM takes over a minute, so
//! each test file lists the tests it runs there ([`Lab`]): the first of
//! them to start runs the whole list in one lab VM, and each then passes or
//! fails with its own result from that run. Inside the lab (and on
//! hardware KVM) [`Lab::ran`] returns false and the test runs where it is.

use std::any::Any;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::{format_artifacts, guest, is_pvm_host, DEBIAN, GUEST_FROZE, NOTHING_PRINTED};

/// Lab runs a test gets when the lab fails by itself ([`unstable`]).
/// With the lab's one CPU that is rare (10 runs in 10 of a 45 s test
/// passed); with two it was one run in five (resources/lab/README.md).
const LAB_ATTEMPTS: u32 = 3;

/// How one test ended in the lab.
#[derive(Clone)]
struct Outcome {
    passed: bool,
    seconds: f64,
    /// What the test printed (libtest captures it; it shows it for a
    /// failure only).
    output: String,
    /// The lab run (1, 2...) that gave this result.
    run: u32,
}

/// The tests of one test file that need the lab on a kvm_pvm host.
pub struct Lab {
    tests: &'static [&'static str],
    timeout_s: u32,
    setup: Option<fn() -> Box<dyn Any>>,
    outcomes: Mutex<Option<Outcomes>>,
}

struct Outcomes {
    by_test: HashMap<String, Outcome>,
    /// The lab runner's own messages and what the tests' child processes
    /// wrote outside libtest's capture, for a test with no result.
    log: String,
}

impl Lab {
    /// `tests`: the exact names of the tests that run in the lab;
    /// `timeout_s`: the most one lab run of all of them may take.
    pub const fn new(tests: &'static [&'static str], timeout_s: u32) -> Lab {
        Lab {
            tests,
            timeout_s,
            setup: None,
            outcomes: Mutex::new(None),
        }
    }

    /// `setup` runs here before the lab run, and what it returns is
    /// dropped after it: what the tests need that is slow or impossible to
    /// make inside the lab (the Debian image is built here, as the default
    /// guest is; a copy of a disk image over 9p takes minutes there).
    pub const fn with_setup(mut self, setup: fn() -> Box<dyn Any>) -> Lab {
        self.setup = Some(setup);
        self
    }

    /// Where test `test` runs. Where this host's KVM can run guest user
    /// space (hardware KVM, or inside the lab) it runs here and this
    /// returns false. On a kvm_pvm host this file's lab tests run in the
    /// lab VM (at the first call, all of them), and this returns true once
    /// `test` passed there, or panics with what it printed.
    pub fn ran(&self, test: &str) -> bool {
        if !is_pvm_host() {
            return false;
        }
        assert!(
            self.tests.contains(&test),
            "{test} is not in its file's list of lab tests"
        );
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let outcomes = outcomes.get_or_insert_with(|| self.run_all());
        let Some(o) = outcomes.by_test.get(test) else {
            panic!(
                "{test} gave no result in the lab; the lab said:\n{}",
                outcomes.log
            );
        };
        println!(
            "--- {test} in the lab: {:.1} s, lab run {} ---\n{}",
            o.seconds, o.run, o.output
        );
        assert!(
            o.passed,
            "{test} failed in the lab (lab run {}):\n{}",
            o.run, o.output
        );
        true
    }

    /// Run every listed test in the lab, each again (up to
    /// [`LAB_ATTEMPTS`] runs) when the lab failed by itself under it.
    fn run_all(&self) -> Outcomes {
        let _made = self.setup.map(|setup| setup());
        let mut by_test: HashMap<String, Outcome> = HashMap::new();
        let mut log = String::new();
        for run in 1..=LAB_ATTEMPTS {
            let pending: Vec<&str> = self
                .tests
                .iter()
                .copied()
                .filter(|t| !by_test.contains_key(*t))
                .collect();
            if pending.is_empty() {
                break;
            }
            let started = Instant::now();
            let (status, stdout, stderr) = self.lab_run(&pending);
            let took = started.elapsed().as_secs_f64();
            let mut results = parse_results(&stdout, run);
            let last = run == LAB_ATTEMPTS;
            // A test the lab failed under runs again; one with no
            // result (the lab stopped before or during it) too.
            let retry: Vec<&str> = pending
                .iter()
                .copied()
                .filter(|t| match results.get(*t) {
                    Some(o) => !o.passed && unstable(&o.output),
                    None => true,
                })
                .collect();
            record_time(&format!("run {} {took:.1} {}", file_name(), pending.len()));
            let said = format!(
                "lab run {run} ({took:.0} s, {} test(s), {status:?}):\n{}{}",
                pending.len(),
                tail(&stderr, 6000),
                non_json(&stdout),
            );
            log.push_str(&said);
            if !retry.is_empty() && !last {
                // What each test to run again printed (its panic says
                // how the lab failed), indented so that its lines are not
                // taken for this run's verdicts.
                let shown: String = retry
                    .iter()
                    .filter_map(|t| results.get(*t).map(|o| (t, o)))
                    .map(|(t, o)| {
                        let lines: String = tail(&o.output, 4000)
                            .lines()
                            .map(|l| format!("  | {l}\n"))
                            .collect();
                        format!("{t} printed:\n{lines}")
                    })
                    .collect();
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: the lab's nested SVM failed by itself under {} on lab run {run} of at most \
                     {LAB_ATTEMPTS}; running {} again. {said}{shown}",
                    file_name(),
                    retry.join(", "),
                    if retry.len() == 1 { "it" } else { "them" },
                );
                for t in &retry {
                    results.remove(*t);
                }
            }
            for (name, o) in results {
                record_time(&format!("test {name} {:.1} {run}", o.seconds));
                by_test.insert(name, o);
            }
        }
        Outcomes { by_test, log }
    }

    /// One lab run of `tests` from this test binary, libtest's results
    /// as JSON lines (libtest's unstable `--format json`, which
    /// RUSTC_BOOTSTRAP lets a stable-built test binary print).
    fn lab_run(&self, tests: &[&str]) -> (Option<i32>, String, String) {
        let exe = std::env::current_exe().expect("test binary path");
        let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/lab/lab");
        let mut cmd = Command::new(&lab);
        cmd.args([
            "run",
            "--no-tty",
            "--timeout",
            &self.timeout_s.to_string(),
            "--",
        ])
        .arg(&exe)
        .arg("--exact")
        .args(tests)
        .args([
            "--test-threads=1",
            "-Z",
            "unstable-options",
            "--format",
            "json",
            "--report-time",
            "--show-output",
        ])
        .env("RUSTC_BOOTSTRAP", "1")
        // Built (or found) here, so the run inside does not have to.
        .env("FLINT_TEST_GUEST", format_artifacts(guest()));
        if let Some(d) = DEBIAN.get() {
            cmd.env("FLINT_TEST_DEBIAN", format_artifacts(d));
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", lab.display()));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The tests' results in libtest's JSON lines; other lines (a child
/// process writing to the shared stdout) are skipped.
fn parse_results(stdout: &str, run: u32) -> HashMap<String, Outcome> {
    let mut results = HashMap::new();
    for line in stdout.lines() {
        let Some(start) = line.find("{ \"type\": \"test\"") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&line[start..]) else {
            continue;
        };
        let passed = match v["event"].as_str() {
            Some("ok") => true,
            Some("failed") => false,
            _ => continue,
        };
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        results.insert(
            name.to_string(),
            Outcome {
                passed,
                seconds: v["exec_time"].as_f64().unwrap_or(0.0),
                output: v["stdout"].as_str().unwrap_or("").to_string(),
                run,
            },
        );
    }
    results
}

/// The ways the lab's emulated nested SVM fails by itself now and then
/// (resources/lab/README.md), as a test's failure shows them, which earn
/// the test another lab run, said out loud: the nested guest was reset to
/// the x86 reset vector right at its start (a triple fault at rip 0xfff0,
/// seen with Firecracker in the lab too); it never ran, so flint printed
/// nothing at all; or it froze part way (seen in the early boot of the
/// same kernel that boots in 20 s on every other run, its clock stopped
/// with it). A test with no result at all (the lab VM timed out, 124, or
/// failed, 125, under it) runs again too. A test that fails any other
/// way, or [`LAB_ATTEMPTS`] times, fails.
fn unstable(text: &str) -> bool {
    text.contains("triple fault (KVM_EXIT_SHUTDOWN) at guest rip 0xfff0")
        || text.contains(NOTHING_PRINTED)
        || text.contains(GUEST_FROZE)
}

/// The test binary's name without cargo's hash.
fn file_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe.file_stem().unwrap_or_default().to_string_lossy();
    stem.rsplit_once('-')
        .map_or(stem.to_string(), |(name, _)| name.to_string())
}

/// tests/run-all.sh sums these up (FLINT_LAB_TIMES): `run FILE SECONDS
/// TESTS` for a lab run, `test NAME SECONDS RUN` for a test's result.
fn record_time(line: &str) {
    if let Some(log) = std::env::var_os("FLINT_LAB_TIMES") {
        let file = std::fs::OpenOptions::new().append(true).open(log);
        let _ = file.and_then(|mut f| writeln!(f, "{line}"));
    }
}

fn non_json(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.contains("{ \"type\": "))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
