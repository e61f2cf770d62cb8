//! A vCPU's and the VM's KVM state taken out mid-run, written through the
//! snapshot file format and put back on a new VM: the new vCPU goes on
//! from the instruction where the first stopped, with its registers, its
//! MSRs and its LAPIC as they were. Uses /dev/kvm directly (no guest
//! kernel): a few instructions that count in rax and report each count on
//! port 0x80.

use devices::GuestMemoryMmap;
use flint::boot::{cpuid, regs};
use flint::snapshot::format;
use flint::vstate::state::{self, VcpuState, VmState};
use flint::vstate::vcpu;
use flint::vstate::vm::Vm;
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

const ENTRY: u64 = 0x10_0000;
/// inc rax; out 0x80, al; jmp back to the inc.
const CODE: [u8; 7] = [0x48, 0xff, 0xc0, 0xe6, 0x80, 0xeb, 0xf9];
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const GS_BASE_VALUE: u64 = 0x1234_5678_9000;

#[derive(Serialize, Deserialize)]
struct Saved {
    vm: VmState,
    vcpu: VcpuState,
}

fn memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    regs::write_tables(&mem).unwrap();
    mem.write_slice(&CODE, GuestAddress(ENTRY)).unwrap();
    mem
}

/// Run until the next write to port 0x80; the byte written.
fn next_count(fd: &mut VcpuFd) -> u8 {
    for _ in 0..1000 {
        match fd.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, data) => return data[0],
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("no write to port 0x80 in 1000 exits");
}

fn msr(fd: &VcpuFd, index: u32) -> u64 {
    let mut m = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(fd.get_msrs(&mut m).unwrap(), 1);
    m.as_slice()[0].data
}

#[test]
fn a_vcpu_taken_out_mid_run_goes_on_in_a_new_vm() {
    let mem = memory();
    let vm = Vm::new(&mem, false).unwrap();
    let mut fd = vm.fd().create_vcpu(0).unwrap();
    let mut cpuid = vcpu::supported_cpuid(vm.kvm()).unwrap();
    cpuid::normalize(cpuid.as_mut_slice(), 0, 1, 1);
    fd.set_cpuid2(&cpuid).unwrap();
    fd.set_sregs(&regs::long_mode_sregs(fd.get_sregs().unwrap()))
        .unwrap();
    let mut r = regs::entry_regs(ENTRY);
    r.rax = 40;
    fd.set_regs(&r).unwrap();
    let gs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_KERNEL_GS_BASE,
        data: GS_BASE_VALUE,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(fd.set_msrs(&gs).unwrap(), 1);
    assert_eq!(next_count(&mut fd), 41);
    assert_eq!(next_count(&mut fd), 42);

    let indices = state::msr_list(vm.kvm()).unwrap();
    let saved = Saved {
        vm: state::save_vm(vm.fd()).unwrap(),
        vcpu: state::save_vcpu(&fd, 0, &indices).unwrap(),
    };
    assert!(
        saved
            .vcpu
            .msrs
            .iter()
            .any(|m| m.index == MSR_KERNEL_GS_BASE && m.data == GS_BASE_VALUE),
        "KERNEL_GS_BASE is among the {} MSRs saved",
        saved.vcpu.msrs.len()
    );
    // Through the file format, as a snapshot would carry it.
    let bytes = format::encode(&format::Header::here(), &saved).unwrap();
    let (_, back): (format::Header, Saved) = format::decode(&bytes, &format::cpu_vendor()).unwrap();
    eprintln!(
        "vCPU + VM state: {} bytes in the file, {} MSRs",
        bytes.len(),
        back.vcpu.msrs.len()
    );
    // The first VM goes on by itself.
    assert_eq!(next_count(&mut fd), 43);
    drop(fd);
    drop(vm);

    // A new VM with a copy of the memory (here: the same code) and the state.
    let mem2 = memory();
    let vm2 = Vm::new(&mem2, false).unwrap();
    state::restore_vm(vm2.fd(), &back.vm).unwrap();
    let mut fd2 = vm2.fd().create_vcpu(0).unwrap();
    state::restore_vcpu(&fd2, &back.vcpu).unwrap();
    let again = state::save_vcpu(&fd2, 0, &indices).unwrap();
    assert_eq!(again.regs, saved.vcpu.regs);
    assert_eq!(again.sregs, saved.vcpu.sregs);
    assert_eq!(again.xcrs, saved.vcpu.xcrs);
    assert_eq!(again.lapic.regs, saved.vcpu.lapic.regs);
    assert_eq!(msr(&fd2, MSR_KERNEL_GS_BASE), GS_BASE_VALUE);
    // From the instruction after the second count, with rax = 42.
    assert_eq!(next_count(&mut fd2), 43);
    assert_eq!(next_count(&mut fd2), 44);
}
