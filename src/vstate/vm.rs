//! The KVM VM: memory slots, in-kernel irqchip and PIT, irqfd and ioeventfd.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use devices::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// A page below 4 GiB, outside RAM and the MMIO windows, for KVM's TSS on
/// Intel hosts (three pages).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors from creating and wiring the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("this KVM lacks {0}, which flint needs")]
    MissingCap(&'static str),
    #[error("cannot create the VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("cannot create the in-kernel interrupt controller: {0}")]
    IrqChip(kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM: {0}")]
    Memory(kvm_ioctls::Error),
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
    #[error("cannot register irqfd for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("cannot register ioeventfd at {addr:#x}: {source}")]
    Ioeventfd {
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("cannot query KVM's supported CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("cannot read KVM's dirty-page log: {0}")]
    DirtyLog(kvm_ioctls::Error),
}

/// The VM and the /dev/kvm handle it came from.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Open KVM, create the VM with its irqchip and PIT, and map `mem`
    /// (with KVM's dirty-page log on if `track_dirty`).
    pub fn new(mem: &GuestMemoryMmap, track_dirty: bool) -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(Error::ApiVersion(api));
        }
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::Irqfd, "irqfd"),
            (Cap::Ioeventfd, "ioeventfd"),
            (Cap::UserMemory, "user memory regions"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(Error::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(Error::Tss)?;
        fd.create_irq_chip().map_err(Error::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(Error::Pit)?;
        let vm = Vm { kvm, fd };
        vm.map_memory(mem, track_dirty)?;
        Ok(vm)
    }

    fn map_memory(&self, mem: &GuestMemoryMmap, track_dirty: bool) -> Result<(), Error> {
        for (slot, region) in mem.iter().enumerate() {
            let start = region.start_addr().0;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| Error::HostAddress(start))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if track_dirty {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: start,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes
            // owned by `mem`, which the VMM keeps alive as long as the VM.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(Error::Memory)?;
        }
        Ok(())
    }

    /// KVM's dirty-page log of each of `mem`'s regions (one bit per 4 KiB
    /// page, the guest's own writes since the last call), which the call
    /// clears. The memory must have been mapped with `track_dirty`.
    pub fn dirty_logs(&self, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>, Error> {
        mem.iter()
            .enumerate()
            .map(|(slot, region)| {
                self.fd
                    .get_dirty_log(slot as u32, region.len() as usize)
                    .map_err(Error::DirtyLog)
            })
            .collect()
    }

    /// The most vCPUs this KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Raise interrupt line `gsi` whenever `evt` is written.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| Error::Irqfd { gsi, source })
    }

    /// Signal `evt` when the guest writes the 32-bit value `datamatch` at
    /// MMIO address `addr`, without a trip to user space.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), Error> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| Error::Ioeventfd { addr, source })
    }
}
