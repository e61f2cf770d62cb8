//! vCPUs: their boot state, their thread, and the dispatch of every exit to
//! the port-I/O bus, the MMIO bus or the VMM.

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use devices::Bus;
use kvm_bindings::{
    kvm_lapic_state, CpuId, Msrs, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::emulate;
use super::vcpu_control::{self, Next, VcpuControl, VcpuHandle};
use crate::boot::{cpuid, msr, regs};
use crate::metrics::VCPU;
use crate::timer::{self, Phase};

/// Errors from creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set up vCPU {id}: {what} failed: {source}")]
    Setup {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot start the thread of vCPU {id}: {source}")]
    Thread { id: u8, source: std::io::Error },
    #[error(transparent)]
    State(#[from] super::state::Error),
}

/// Why the guest stopped, as reported to the VMM loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked to reboot (keyboard-controller reset, KVM reset event).
    Reboot,
    /// The guest powered off.
    PowerOff,
    /// Something the VMM cannot continue from; the message names the vCPU,
    /// the exit and the guest rip.
    Crash(String),
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Emulate the failed instruction (PVM hosts only).
    Emulate,
    Stop(StopReason),
}

/// Route one exit: device accesses go to the buses, lifecycle events become
/// stop reasons. Unclaimed port reads and MMIO reads return all ones, like
/// an empty bus.
pub fn handle_exit(exit: VcpuExit, pio: &Bus, mmio: &Bus) -> Action {
    VCPU.count_exit(&exit);
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
            Action::Continue
        }
        // With the in-kernel LAPIC, HLT is handled in KVM; an exit here only
        // means "nothing to do yet".
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => Action::Continue,
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_RESET => Action::Stop(StopReason::Reboot),
            KVM_SYSTEM_EVENT_SHUTDOWN => Action::Stop(StopReason::PowerOff),
            KVM_SYSTEM_EVENT_CRASH => {
                Action::Stop(StopReason::Crash("guest reported a crash".into()))
            }
            other => Action::Stop(StopReason::Crash(format!("unknown system event {other}"))),
        },
        VcpuExit::Shutdown => {
            Action::Stop(StopReason::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()))
        }
        VcpuExit::InternalError => Action::Emulate,
        VcpuExit::FailEntry(reason, cpu) => Action::Stop(StopReason::Crash(format!(
            "KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on host CPU {cpu}"
        ))),
        other => Action::Stop(StopReason::Crash(format!("unhandled exit {other:?}"))),
    }
}

/// Write one 32-bit LAPIC register in a `kvm_lapic_state`.
fn set_apic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs.iter_mut().skip(offset).zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

fn get_apic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (v, r) in b.iter_mut().zip(lapic.regs.iter().skip(offset)) {
        *v = *r as u8;
    }
    u32::from_le_bytes(b)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// LINT0 delivers the PIC's ExtINT, LINT1 NMIs, as firmware leaves them.
pub fn configure_lints(lapic: &mut kvm_lapic_state) {
    let mode = |reg: u32, m: u32| (reg & !0x700) | (m << 8);
    let l0 = get_apic_reg(lapic, APIC_LVT0);
    set_apic_reg(lapic, APIC_LVT0, mode(l0, APIC_MODE_EXTINT));
    let l1 = get_apic_reg(lapic, APIC_LVT1);
    set_apic_reg(lapic, APIC_LVT1, mode(l1, APIC_MODE_NMI));
}

/// KVM's supported CPUID, the base every vCPU's CPUID is made from.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error::Setup {
            id: 0,
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })
}

/// One vCPU and what its thread needs.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    stop: Sender<(u8, StopReason)>,
    stop_evt: Arc<EventFd>,
}

impl Vcpu {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &kvm_ioctls::VmFd,
        id: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: GuestMemoryMmap,
        stop: Sender<(u8, StopReason)>,
        stop_evt: Arc<EventFd>,
    ) -> Result<Self, Error> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| Error::Create { id, source })?;
        Ok(Vcpu {
            fd,
            id,
            pio,
            mmio,
            mem,
            stop,
            stop_evt,
        })
    }

    fn setup_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let id = self.id;
        move |source| Error::Setup { id, what, source }
    }

    /// Put the vCPU in the 64-bit Linux entry state; `supported` is KVM's
    /// supported CPUID (see [`supported_cpuid`]), fetched once for all vCPUs;
    /// `threads` per core is 1, or 2 with SMT.
    pub fn configure(
        &self,
        supported: &CpuId,
        entry: u64,
        cpus: u8,
        threads: u8,
    ) -> Result<(), Error> {
        let mut cpuid = supported.clone();
        cpuid::normalize(cpuid.as_mut_slice(), self.id, cpus, threads);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.setup_err("KVM_SET_CPUID2"))?;
        let entries = msr::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Setup {
            id: self.id,
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.setup_err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            log::debug!(
                "vCPU {}: KVM took {set} of {} boot MSRs",
                self.id,
                entries.len()
            );
        }
        let sregs = self
            .fd
            .get_sregs()
            .map_err(self.setup_err("KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&regs::long_mode_sregs(sregs))
            .map_err(self.setup_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::entry_regs(entry))
            .map_err(self.setup_err("KVM_SET_REGS"))?;
        self.fd
            .set_fpu(&regs::entry_fpu())
            .map_err(self.setup_err("KVM_SET_FPU"))?;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.setup_err("KVM_GET_LAPIC"))?;
        configure_lints(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.setup_err("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Put a snapshot's state back (instead of [`Vcpu::configure`]).
    pub fn restore(&self, s: &super::state::VcpuState) -> Result<(), Error> {
        Ok(super::state::restore_vcpu(&self.fd, s)?)
    }

    /// The host TSC rate KVM gives this vCPU, in kHz.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok()
    }

    /// Start the vCPU's thread; the handle pauses, resumes and kicks it.
    /// [`vcpu_control::install_kick_handler`] must have run.
    /// The thread installs `filter` (seccomp) before its first KVM_RUN;
    /// with `paused` it waits for a resume before it.
    pub fn start(
        self,
        filter: Option<std::sync::Arc<seccompiler::BpfProgram>>,
        paused: bool,
    ) -> Result<VcpuHandle, Error> {
        let id = self.id;
        let (cmd_tx, cmd_rx) = channel();
        if paused {
            // Read before the first KVM_RUN: the guest runs nothing.
            let _ = cmd_tx.send(vcpu_control::VcpuCmd::Pause);
        }
        let (ack_tx, ack_rx) = channel();
        let ctl = VcpuControl {
            cmd: cmd_rx,
            ack: ack_tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run(ctl, filter))
            .map_err(|source| Error::Thread { id, source })?;
        Ok(VcpuHandle::new(id, cmd_tx, ack_rx, thread))
    }

    fn run(mut self, ctl: VcpuControl, filter: Option<std::sync::Arc<seccompiler::BpfProgram>>) {
        vcpu_control::set_thread_kvm_run(self.fd.get_kvm_run());
        if let Some(f) = filter {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu, &f) {
                let _ = self
                    .stop
                    .send((self.id, StopReason::Crash(format!("vCPU {}: {e}", self.id))));
                let _ = self.stop_evt.write(1);
                return;
            }
        }
        if self.id == 0 {
            timer::mark(Phase::FirstKvmRun);
        }
        loop {
            let (fd, id) = (&self.fd, self.id);
            let mut save =
                |msrs: &[u32]| super::state::save_vcpu(fd, id, msrs).map_err(|e| e.to_string());
            if ctl.poll(&mut save) == Next::Exit {
                return;
            }
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(exit, &self.pio, &self.mmio),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick: clear it, then read the commands at the top.
                    self.fd.set_kvm_immediate_exit(0);
                    Action::Continue
                }
                Err(e) => Action::Stop(StopReason::Crash(format!("KVM_RUN failed: {e}"))),
            };
            let action = match action {
                Action::Emulate => self.emulate(),
                a => a,
            };
            if let Action::Stop(reason) = action {
                let reason = match reason {
                    StopReason::Crash(msg) => StopReason::Crash(format!(
                        "vCPU {}: {msg} at guest rip {}",
                        self.id,
                        self.rip_text()
                    )),
                    r => r,
                };
                // The VMM may already be gone; nothing left to tell then.
                let _ = self.stop.send((self.id, reason));
                let _ = self.stop_evt.write(1);
                return;
            }
        }
    }

    fn rip_text(&self) -> String {
        self.fd
            .get_regs()
            .map_or_else(|e| format!("unknown ({e})"), |r| format!("{:#x}", r.rip))
    }

    /// Handle KVM_EXIT_INTERNAL_ERROR: on a PVM host, an instruction its
    /// emulator lacks; emulate it here or report why not.
    fn emulate(&mut self) -> Action {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which KVM
        // fills the `emulation_failure` member of the union (same layout as
        // `internal` for suberror and ndata).
        let ef = unsafe { run.__bindgen_anon_1.emulation_failure };
        if ef.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Action::Stop(StopReason::Crash(format!(
                "KVM internal error, suberror {}",
                ef.suberror
            )));
        }
        let mut bytes = Vec::with_capacity(15);
        if ef.ndata >= 3
            && ef.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        {
            // SAFETY: the flag says the instruction-bytes member is valid.
            let insn = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
            let n = usize::from(insn.insn_size).min(15);
            bytes.extend(insn.insn_bytes.iter().take(n));
        }
        let (mut regs, sregs) = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                return Action::Stop(StopReason::Crash(format!(
                    "emulation failure, and the registers cannot be read: {e}"
                )))
            }
        };
        if bytes.is_empty() {
            bytes.resize(15, 0);
            let rip = sregs.cs.base.wrapping_add(regs.rip);
            // An instruction near the end of a page may be followed by an
            // unmapped one: then fetch only what its own page holds.
            let in_page = (0x1000 - (rip & 0xfff)) as usize;
            let fetched = self.read_virt(rip, &mut bytes) || {
                bytes.truncate(in_page.min(15));
                self.read_virt(rip, &mut bytes)
            };
            if !fetched {
                return Action::Stop(StopReason::Crash(
                    "emulation failure at an rip that does not translate".into(),
                ));
            }
        }
        let rip_before = regs.rip;
        let fd = &self.fd;
        let mem = &self.mem;
        let mut read = |gva: u64, buf: &mut [u8]| read_virt(fd, mem, gva, buf);
        let mut ctx = emulate::Ctx {
            regs: &mut regs,
            fs_base: sregs.fs.base,
            gs_base: sregs.gs.base,
            read_mem: &mut read,
        };
        let outcome = match emulate::emulate(&bytes, &mut ctx) {
            Ok(o) => o,
            Err(e) => {
                return Action::Stop(StopReason::Crash(format!(
                    "the host could not emulate an instruction and neither could flint: {e}"
                )))
            }
        };
        log::debug!(
            "vCPU {}: emulated {:02x?} at {:#x} ({outcome:?})",
            self.id,
            bytes.get(..4).unwrap_or(&bytes),
            sregs.cs.base.wrapping_add(rip_before)
        );
        if let Err(e) = self.fd.set_regs(&regs) {
            return Action::Stop(StopReason::Crash(format!(
                "KVM_SET_REGS after emulation: {e}"
            )));
        }
        if outcome == emulate::Outcome::InjectBreakpoint {
            if let Err(e) = self.inject_exception(3) {
                return Action::Stop(StopReason::Crash(format!("cannot inject #BP: {e}")));
            }
        }
        Action::Continue
    }

    fn read_virt(&self, gva: u64, buf: &mut [u8]) -> bool {
        read_virt(&self.fd, &self.mem, gva, buf)
    }

    fn inject_exception(&self, vector: u8) -> Result<(), kvm_ioctls::Error> {
        let mut events = self.fd.get_vcpu_events()?;
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        events.exception.pending = 0;
        self.fd.set_vcpu_events(&events)
    }
}

/// Read guest-virtual memory through the vCPU's page tables, a page at a time.
fn read_virt(fd: &VcpuFd, mem: &GuestMemoryMmap, gva: u64, buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let addr = gva.wrapping_add(done as u64);
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        let Ok(t) = fd.translate_gva(addr) else {
            return false;
        };
        let Some(dst) = buf.get_mut(done..done + n) else {
            return false;
        };
        if t.valid == 0
            || mem
                .read_slice(dst, GuestAddress(t.physical_address))
                .is_err()
        {
            return false;
        }
        done += n;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;
    use std::sync::Mutex;

    struct Port(u8);
    impl BusDevice for Port {
        fn read(&mut self, _b: u64, _o: u64, d: &mut [u8]) {
            d.fill(self.0);
        }
        fn write(&mut self, _b: u64, _o: u64, d: &[u8]) {
            self.0 = d[0];
        }
    }

    #[test]
    fn exits_route_to_the_buses() {
        let mut pio = Bus::new();
        let dev = Arc::new(Mutex::new(Port(0)));
        pio.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mmio = Bus::new();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, &[0x41]), &pio, &mmio),
            Action::Continue
        );
        assert_eq!(dev.lock().unwrap().0, 0x41);
        let mut d = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3f9, &mut d), &pio, &mmio);
        assert_eq!(d, [0x41]);
        handle_exit(VcpuExit::IoIn(0x2f8, &mut d), &pio, &mmio);
        assert_eq!(d, [0xff]);
        let mut w = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut w), &pio, &mmio);
        assert_eq!(w, [0xff; 4]);
    }

    #[test]
    fn lifecycle_exits() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &pio,
                &mmio
            ),
            Action::Stop(StopReason::Reboot)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &pio,
                &mmio
            ),
            Action::Stop(StopReason::PowerOff)
        );
        assert!(matches!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            Action::Stop(StopReason::Crash(m)) if m.contains("triple fault")
        ));
        assert_eq!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            Action::Emulate
        );
        assert!(matches!(
            handle_exit(VcpuExit::Unknown, &pio, &mmio),
            Action::Stop(StopReason::Crash(_))
        ));
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        set_apic_reg(&mut l, APIC_LVT0, 0x0001_0000);
        configure_lints(&mut l);
        assert_eq!(get_apic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_apic_reg(&l, APIC_LVT1), 0x0000_0400);
    }
}
