//! The VMM: builds the VM from a [`VmConfig`], runs the vCPUs and the event
//! loop, and reports how the guest ended.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::VmConfig;
use crate::control::{self, Control, Outcome};
use crate::device_manager::{self, DeviceManager};
use crate::host::{self, HostKind};
use crate::timer::{self, Phase};
use crate::vstate::vcpu::{self, Vcpu};
use crate::vstate::vm::{self, Vm};
use crate::{boot, memory, virtio_devices};

/// How often the event loop writes out a partial console line, in ms.
const CONSOLE_FLUSH_MS: i32 = 20;

/// Everything that can stop a VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Devices(#[from] device_manager::Error),
    #[error(transparent)]
    VirtioDevices(#[from] virtio_devices::Error),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("vcpu_count {asked} is above this host's KVM limit of {max}")]
    TooManyVcpus { asked: u8, max: usize },
    #[error("mem_size_mib {asked} is more than this host has ({host} MiB of RAM)")]
    MemBeyondHost { asked: u64, host: u64 },
    #[error("the kernel loader stopped unexpectedly")]
    LoaderThread,
    #[error("cannot set up the event loop: {0}")]
    EventLoop(String),
}

/// Options that are about the run, not the VM.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub boot_timer: bool,
    /// How long a guest may take to reboot after Ctrl-Alt-Del on a signal.
    pub shutdown_timeout: Duration,
    /// Add the kernel parameters a PVM host needs (when on one).
    pub host_profile: bool,
}

/// Host RAM in MiB, from sysinfo.
fn host_ram_mib() -> Option<u64> {
    // SAFETY: sysinfo is plain data that the call fills in.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is a valid sysinfo to fill.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return None;
    }
    Some((si.totalram as u64 * u64::from(si.mem_unit)) >> 20)
}

/// The full kernel command line: the configured one, the virtio devices,
/// the root device and, on a PVM host, the profile it needs.
pub fn full_cmdline(
    cfg: &VmConfig,
    virtio: &[String],
    root: Option<&str>,
    profile: Option<&str>,
) -> String {
    let mut parts: Vec<&str> = vec![cfg.cmdline.trim()];
    parts.extend(virtio.iter().map(String::as_str));
    parts.extend(root);
    parts.extend(profile);
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

/// Build and run the VM until the guest ends; returns how it ended.
pub fn run(cfg: &VmConfig, opts: &RunOptions) -> Result<Outcome, Error> {
    let host = host::detect();
    if let Some(ram) = host_ram_mib() {
        if cfg.mem_mib > ram {
            return Err(Error::MemBeyondHost {
                asked: cfg.mem_mib,
                host: ram,
            });
        }
    }
    control::block_signals()?;
    boot::check_cmdline(&cfg.cmdline)?;
    let mem = memory::create(cfg.mem_mib)?;
    // Reading the kernel and initrd into guest memory and KVM's building of
    // the VM (irqchip, PIT, memory slots) are independent: overlap them.
    let (images, vm) = std::thread::scope(|s| {
        let loader = s.spawn(|| boot::load_images(&mem, &cfg.kernel, cfg.initrd.as_deref()));
        let vm = Vm::new(&mem);
        (loader.join(), vm)
    });
    let images = images.map_err(|_| Error::LoaderThread)??;
    let vm = vm?;
    if usize::from(cfg.vcpus) > vm.max_vcpus() {
        return Err(Error::TooManyVcpus {
            asked: cfg.vcpus,
            max: vm.max_vcpus(),
        });
    }
    let mut dm = DeviceManager::new(&vm, opts.boot_timer)?;
    let root = virtio_devices::attach(cfg, &vm, &mem, &mut dm)?;

    let stop_evt =
        Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| Error::EventLoop(e.to_string()))?);
    let (stop_tx, stop_rx) = channel();
    let pio = Arc::new(std::mem::take(&mut dm.pio));
    let mmio = Arc::new(std::mem::take(&mut dm.mmio));
    let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
    for id in 0..cfg.vcpus {
        vcpus.push(Vcpu::new(
            vm.fd(),
            id,
            pio.clone(),
            mmio.clone(),
            mem.clone(),
            stop_tx.clone(),
            stop_evt.clone(),
        )?);
    }
    let profile = match (host, opts.host_profile) {
        (HostKind::Pvm, true) => {
            let khz = vcpus[0].tsc_khz().unwrap_or(0);
            (khz > 0).then(|| host::pvm_cmdline(khz))
        }
        _ => None,
    };
    let cmdline = full_cmdline(cfg, &dm.cmdline, root.as_deref(), profile.as_deref());
    log::debug!("kernel command line: {cmdline}");
    let entry = boot::write_boot_data(&mem, &images, cfg.mem_mib, cfg.vcpus, &cmdline)?;
    let supported = vcpu::supported_cpuid(vm.kvm())?;
    for v in &vcpus {
        v.configure(&supported, entry.entry.0, cfg.vcpus)?;
    }

    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| Error::EventLoop(e.to_string()))?;
    let ctl = Arc::new(Mutex::new(Control::new(
        stop_evt,
        stop_rx,
        dm.i8042.clone(),
        dm.serial.clone(),
        opts.shutdown_timeout,
    )?));
    em.add_subscriber(ctl.clone());
    for s in dm.subscribers.drain(..) {
        em.add_subscriber(s);
    }
    if host == HostKind::Pvm {
        eprintln!("{}", host::PVM_WARNING);
    }
    timer::mark(Phase::VmBuilt);
    for v in vcpus {
        // The threads are never joined: the process ends when the VM does.
        v.start()?;
    }
    let serial = dm.serial.clone();
    let flush_console = || {
        // A failing stdout is counted by the serial device; nothing to add.
        let _ = devices::bus::lock(&serial).output_mut().flush_pending();
    };
    loop {
        // The timeout bounds how long a partial console line (a prompt, an
        // echoed key) waits for its newline.
        if let Err(e) = em.run_with_timeout(CONSOLE_FLUSH_MS) {
            if e != event_manager::Error::Epoll(vmm_sys_util::errno::Error::new(libc::EINTR)) {
                return Err(Error::EventLoop(e.to_string()));
            }
        }
        flush_console();
        if let Some(outcome) = devices::bus::lock(&ctl).outcome() {
            // `vm` and `mem` must outlive the vCPU threads, which run until
            // the process exits.
            std::mem::forget(vm);
            return Ok(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_assembly() {
        let cfg = VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0 ".into(),
            vcpus: 1,
            mem_mib: 128,
            drives: vec![],
            nets: vec![],
        };
        let v = vec!["virtio_mmio.device=4K@0xc0001000:5".to_string()];
        assert_eq!(
            full_cmdline(&cfg, &v, Some("root=/dev/vda rw"), Some("nopv")),
            "console=ttyS0 virtio_mmio.device=4K@0xc0001000:5 root=/dev/vda rw nopv"
        );
        assert_eq!(full_cmdline(&cfg, &[], None, None), "console=ttyS0");
    }
}
