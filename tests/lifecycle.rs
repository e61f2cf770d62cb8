//! How a VM ends, with tiny hand-written guests (no Linux): a guest reset
//! ends flint with 0, a triple fault with 3 and a message that names the
//! vCPU, the exit and the guest rip.

mod common;

use std::time::Duration;

use common::{run, tiny};

#[test]
fn guest_reset_through_the_i8042_exits_0() {
    let k = tiny("reset");
    let (status, out) = run(
        &["--kernel", k.to_str().unwrap(), "--boot-timer"],
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("the guest rebooted"), "{out}");
    assert!(out.contains("flint: boot-phase first-kvm-run "), "{out}");
    assert!(
        out.contains("flint: boot-phase first-console-byte not-reached"),
        "{out}"
    );
}

#[test]
fn triple_fault_exits_3_naming_vcpu_exit_and_rip() {
    let k = tiny("triple");
    for vcpus in ["1", "2"] {
        let (status, out) = run(
            &["--kernel", k.to_str().unwrap(), "--vcpus", vcpus],
            Duration::from_secs(60),
        );
        assert_eq!(status.code(), Some(3), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("flint: guest stopped: "))
            .unwrap_or_else(|| panic!("no crash line:\n{out}"));
        assert!(line.contains("vCPU 0"), "{line}");
        assert!(line.contains("triple fault"), "{line}");
        assert!(line.contains("rip 0x1000000"), "{line}");
    }
}
