//! Boot phases, in nanoseconds since the process started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The phases flint records, in boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ConfigParsed,
    VmBuilt,
    FirstKvmRun,
    FirstConsoleByte,
    InitHandover,
    BootTimer,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::ConfigParsed,
        Phase::VmBuilt,
        Phase::FirstKvmRun,
        Phase::FirstConsoleByte,
        Phase::InitHandover,
        Phase::BootTimer,
    ];

    /// The name printed and used by benchmark scripts.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ConfigParsed => "config-parsed",
            Phase::VmBuilt => "vm-built",
            Phase::FirstKvmRun => "first-kvm-run",
            Phase::FirstConsoleByte => "first-console-byte",
            Phase::InitHandover => "init-handover",
            Phase::BootTimer => "boot-timer",
        }
    }
}

static START: OnceLock<Instant> = OnceLock::new();
static MARKS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Fix time zero; call first thing in main.
pub fn start() {
    START.get_or_init(Instant::now);
}

fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos().max(1) as u64
}

/// Record `phase` the first time it happens; later calls are ignored.
/// Returns true when this call recorded it.
pub fn mark(phase: Phase) -> bool {
    let slot = &MARKS[phase as usize];
    if slot.load(Ordering::Relaxed) != 0 {
        return false;
    }
    slot.compare_exchange(0, now_ns(), Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// When `phase` happened, if it did.
pub fn get(phase: Phase) -> Option<u64> {
    match MARKS[phase as usize].load(Ordering::Relaxed) {
        0 => None,
        ns => Some(ns),
    }
}

/// The report printed at exit: one `flint: boot-phase NAME MS ms` line per
/// phase reached, in a fixed format that scripts parse.
pub fn report() -> String {
    let mut out = String::new();
    for p in Phase::ALL {
        match get(p) {
            Some(ns) => out.push_str(&format!(
                "flint: boot-phase {} {:.3} ms\n",
                p.name(),
                ns as f64 / 1e6
            )),
            None => out.push_str(&format!("flint: boot-phase {} not-reached\n", p.name())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_mark_wins() {
        start();
        assert!(mark(Phase::VmBuilt));
        let t = get(Phase::VmBuilt).unwrap();
        assert!(!mark(Phase::VmBuilt));
        assert_eq!(get(Phase::VmBuilt), Some(t));
        let r = report();
        assert!(r.contains("flint: boot-phase vm-built "), "{r}");
    }
}
