//! What kind of KVM host flint runs on, and what the guest kernel needs to
//! hear about it.
//!
//! On a PVM host (`kvm_pvm`: KVM without hardware virtualization) the guest
//! kernel's code is emulated by the host and guest user space cannot make
//! system calls. A Linux guest still boots if it stays off instructions the
//! host emulator lacks and off KVM's paravirtual hypercalls, which hang there.

use std::path::Path;

/// The KVM implementation behind /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// VMX or SVM: the normal case.
    Hardware,
    /// kvm_pvm: page-table based, emulating; no guest system calls.
    Pvm,
}

/// Detect the host by the module that serves /dev/kvm.
pub fn detect() -> HostKind {
    detect_in(Path::new("/sys/module"))
}

fn detect_in(sys_module: &Path) -> HostKind {
    if sys_module.join("kvm_pvm").exists() {
        HostKind::Pvm
    } else {
        HostKind::Hardware
    }
}

/// CPUID feature bits (as `clearcpuid=` numbers: word * 32 + bit) the guest
/// kernel must not use on a PVM host because the host's emulator lacks the
/// instructions (SSE3..4.2, POPCNT, XSAVE users, SMAP's clac/stac...). The
/// guest sees the host's CPUID whatever KVM_SET_CPUID2 says, so the kernel
/// itself has to be told.
pub const PVM_CLEARCPUID: &str = "308,129,137,140,141,145,147,148,150,151,153,158,288,291,\
296,297,298,306,307,311,312,317,59,197,534,580";

/// Kernel command-line parameters a PVM host needs, for a TSC of `tsc_khz`.
///
/// `nopv` keeps the kernel off KVM hypercalls (PV IPIs, TLB flush, yield,
/// kvmclock), which never return on PVM; without kvmclock it would calibrate
/// the TSC against the PIT in an emulated loop for minutes, so the rate and
/// the matching loops-per-jiffy are given (for HZ=100; a kernel with a higher
/// HZ only gets longer delays than asked for, which is safe).
pub fn pvm_cmdline(tsc_khz: u32) -> String {
    let lpj = u64::from(tsc_khz) * 1000 / 100;
    format!("nopv noxsave clearcpuid={PVM_CLEARCPUID} tsc_early_khz={tsc_khz} lpj={lpj}")
}

/// The one message a user on a PVM host gets.
pub const PVM_WARNING: &str = "flint: this host's KVM is kvm_pvm (no hardware virtualization): \
the guest kernel runs emulated (slowly) and guest user space cannot make system calls here, \
so the guest's init will die at its first system call; use a host with VMX/SVM for full guests";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_pvm_by_module() {
        let dir = std::env::temp_dir().join(format!("flint-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(detect_in(&dir), HostKind::Hardware);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(detect_in(&dir), HostKind::Pvm);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pvm_profile() {
        let c = pvm_cmdline(2_000_000);
        assert!(c.contains("nopv") && c.contains("noxsave"));
        assert!(c.contains("tsc_early_khz=2000000 lpj=20000000"));
        assert!(c.contains("clearcpuid=308,"));
    }
}
