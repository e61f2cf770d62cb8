//! What KVM holds of a stopped VM and its vCPUs, taken out and put back:
//! the part of a snapshot that lives in the kernel.
//!
//! A vCPU's state is taken while it is out of KVM_RUN (paused); it is put
//! back on a vCPU that was created but has not run, in the order KVM needs:
//! CPUID before the MSRs it enables, the MSRs before the registers, the
//! LAPIC before the MP state, the pending events last.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vCPU {id}: {what} failed: {source}")]
    Vcpu {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM took {took} of {count} MSRs; it refused MSR {index:#x}")]
    MsrRefused {
        id: u8,
        took: usize,
        count: usize,
        index: u32,
    },
    #[error("vCPU {id}: {what} does not fit KVM's bounds")]
    TooMany { id: u8, what: &'static str },
    #[error("the VM's {what} failed: {source}")]
    Vm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// One vCPU, as KVM holds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: Box<kvm_xsave>,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The guest's TSC rate; restored where the host's differs and KVM
    /// can scale it.
    pub tsc_khz: Option<u32>,
}

/// The VM-wide part: the in-kernel PIC pair and IOAPIC, the PIT and the
/// kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSRs worth saving: those KVM lists as saved/restored for its
/// guests (KVM_GET_MSR_INDEX_LIST).
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    kvm.get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(|source| Error::Vm {
            what: "KVM_GET_MSR_INDEX_LIST",
            source,
        })
}

fn vcpu_err(id: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Vcpu { id, what, source }
}

/// Read the MSRs of `indices` that this vCPU has: KVM stops at the first
/// one it cannot read; that one is left out and the rest read on.
fn read_msrs(fd: &VcpuFd, id: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooMany {
            id,
            what: "the MSR list",
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(vcpu_err(id, "KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice().iter().take(n).copied());
        // Skip the one KVM refused (if any) and go on after it.
        rest = rest.get(n + 1..).unwrap_or_default();
    }
    Ok(out)
}

/// Take vCPU `id`'s state; it must not be in KVM_RUN.
pub fn save_vcpu(fd: &VcpuFd, id: u8, msr_indices: &[u32]) -> Result<VcpuState, Error> {
    // The MP state first: reading it makes KVM settle pending APIC events.
    let mp_state = fd
        .get_mp_state()
        .map_err(vcpu_err(id, "KVM_GET_MP_STATE"))?;
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(vcpu_err(id, "KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        id,
        cpuid: cpuid.as_slice().to_vec(),
        regs: fd.get_regs().map_err(vcpu_err(id, "KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(vcpu_err(id, "KVM_GET_SREGS"))?,
        // flint never enables dynamic XSAVE features (AMX): the legacy
        // 4 KiB kvm_xsave holds the whole state.
        xsave: Box::new(fd.get_xsave().map_err(vcpu_err(id, "KVM_GET_XSAVE"))?),
        xcrs: fd.get_xcrs().map_err(vcpu_err(id, "KVM_GET_XCRS"))?,
        debug_regs: fd
            .get_debug_regs()
            .map_err(vcpu_err(id, "KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(vcpu_err(id, "KVM_GET_LAPIC"))?,
        events: fd
            .get_vcpu_events()
            .map_err(vcpu_err(id, "KVM_GET_VCPU_EVENTS"))?,
        msrs: read_msrs(fd, id, msr_indices)?,
        mp_state,
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Put `s` back on a vCPU that has not run yet.
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), Error> {
    let id = s.id;
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| Error::TooMany {
        id,
        what: "the CPUID table",
    })?;
    fd.set_cpuid2(&cpuid)
        .map_err(vcpu_err(id, "KVM_SET_CPUID2"))?;
    if let Some(khz) = s.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz)
                .map_err(vcpu_err(id, "KVM_SET_TSC_KHZ"))?;
        }
    }
    let msrs = Msrs::from_entries(&s.msrs).map_err(|_| Error::TooMany {
        id,
        what: "the MSR list",
    })?;
    let took = fd.set_msrs(&msrs).map_err(vcpu_err(id, "KVM_SET_MSRS"))?;
    if took != s.msrs.len() {
        return Err(Error::MsrRefused {
            id,
            took,
            count: s.msrs.len(),
            index: s.msrs.get(took).map_or(0, |m| m.index),
        });
    }
    fd.set_sregs(&s.sregs)
        .map_err(vcpu_err(id, "KVM_SET_SREGS"))?;
    fd.set_regs(&s.regs).map_err(vcpu_err(id, "KVM_SET_REGS"))?;
    // SAFETY: the buffer is a kvm_xsave KVM gave out (4 KiB, no dynamic
    // features), as set_xsave expects.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(vcpu_err(id, "KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(vcpu_err(id, "KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debug_regs)
        .map_err(vcpu_err(id, "KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic)
        .map_err(vcpu_err(id, "KVM_SET_LAPIC"))?;
    fd.set_mp_state(s.mp_state)
        .map_err(vcpu_err(id, "KVM_SET_MP_STATE"))?;
    fd.set_vcpu_events(&s.events)
        .map_err(vcpu_err(id, "KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn irqchip(fd: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, Error> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(|source| Error::Vm { what, source })?;
    Ok(chip)
}

/// Take the VM-wide state (its vCPUs paused).
pub fn save_vm(fd: &VmFd) -> Result<VmState, Error> {
    Ok(VmState {
        pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
        pit: fd.get_pit2().map_err(|source| Error::Vm {
            what: "KVM_GET_PIT2",
            source,
        })?,
        clock: fd.get_clock().map_err(|source| Error::Vm {
            what: "KVM_GET_CLOCK",
            source,
        })?,
    })
}

/// Put the VM-wide state back on a VM made with its irqchip and PIT,
/// before its vCPUs run.
pub fn restore_vm(fd: &VmFd, s: &VmState) -> Result<(), Error> {
    for (chip, what) in [
        (&s.pic_master, "KVM_SET_IRQCHIP (PIC master)"),
        (&s.pic_slave, "KVM_SET_IRQCHIP (PIC slave)"),
        (&s.ioapic, "KVM_SET_IRQCHIP (IOAPIC)"),
    ] {
        fd.set_irqchip(chip)
            .map_err(|source| Error::Vm { what, source })?;
    }
    fd.set_pit2(&s.pit).map_err(|source| Error::Vm {
        what: "KVM_SET_PIT2",
        source,
    })?;
    // With KVM_CLOCK_REALTIME (Linux 5.16 on) KVM adds the wall-clock
    // time that passed since the snapshot, so the guest's clock catches up
    // with the time it spent in the file; without it the clock goes on from
    // where it stood. KVM_CLOCK_TSC_STABLE is a GET flag only.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        flags: s.clock.flags & KVM_CLOCK_REALTIME,
        realtime: s.clock.realtime,
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(|source| Error::Vm {
        what: "KVM_SET_CLOCK",
        source,
    })?;
    Ok(())
}
