//! The VMM: a [`Vmm`] owns the VM, its vCPU threads and its devices. It is
//! built from a [`VmConfig`] ([`Vmm::build`]), started ([`Vmm::start`]) and
//! run until the guest ends ([`Vmm::run`]), with a hook the API uses to
//! act on the running VM from the same thread as the event loop.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::GuestMemoryMmap;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::kernel_scan::VirtioCmdline;
use crate::config::VmConfig;
use crate::control::{self, Control, Outcome};
use crate::device_manager::{self, DeviceManager, VirtioHandle};
use crate::host::{self, HostKind};
use crate::metrics::MetricsSink;
use crate::timer::{self, Phase};
use crate::vstate::vcpu::{self, Vcpu};
use crate::vstate::vcpu_control::{self, VcpuHandle};
use crate::vstate::vm::{self, Vm};
use crate::{boot, memory, virtio_devices};

/// How often the event loop writes out a partial console line, in ms.
const CONSOLE_FLUSH_MS: i32 = 20;
/// How long a vCPU may take to stop or start again when asked.
const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

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
    VcpuControl(#[from] vcpu_control::Error),
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
    #[error("the VM is already {0}")]
    State(&'static str),
    #[error("cannot send Ctrl-Alt-Del: {0}")]
    CtrlAltDel(String),
    #[error("drive {id:?}: {why}")]
    Drive { id: String, why: String },
    #[error("no balloon device is configured (PUT /balloon before InstanceStart)")]
    NoBalloon,
    #[error(transparent)]
    Balloon(#[from] devices::virtio::balloon::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    #[error(transparent)]
    KvmState(#[from] crate::vstate::state::Error),
    #[error(
        "the microVM must be paused for a snapshot: PATCH /vm {{\"state\": \"Paused\"}} first"
    )]
    NotPaused,
}

/// Options that are about the run, not the VM.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub boot_timer: bool,
    /// How long a guest may take to reboot after Ctrl-Alt-Del on a signal.
    pub shutdown_timeout: Duration,
    /// Add the kernel parameters a PVM host needs (when on one).
    pub host_profile: bool,
    /// The seccomp filters of the vCPU threads (and the others, which
    /// main.rs installs).
    pub seccomp: crate::seccomp::Filters,
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

/// Whether the virtio devices go on the kernel command line
/// (`virtio_mmio.device=`) rather than in the ACPI DSDT, from what flint
/// found in the kernel; logs the choice. Never both: the guest would
/// register every device twice.
pub fn virtio_on_cmdline(kernel: VirtioCmdline) -> bool {
    let why = match kernel {
        VirtioCmdline::Supported => {
            log::info!(
                "virtio devices: on the kernel command line (the kernel takes virtio_mmio.device=)"
            );
            return true;
        }
        VirtioCmdline::Absent => "the kernel has no virtio_mmio.device= parameter",
        VirtioCmdline::Unknown => {
            "flint cannot read this kernel, whose payload the guest decompresses, \
             to see whether it takes virtio_mmio.device="
        }
    };
    log::info!("virtio devices: in the ACPI DSDT ({why})");
    false
}

/// An event loop subscriber that only wakes the loop: the work happens in
/// the hook [`Vmm::run`] calls after every wake-up.
struct Waker(EventFd);

impl MutEventSubscriber for Waker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::error!("cannot watch the API's wake-up descriptor: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Whether the guest's vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPU threads not started yet.
    Built,
    Running,
    Paused,
}

/// Checks and process set-up before any VM is made.
fn prepare(cfg: &VmConfig) -> Result<HostKind, Error> {
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
    vcpu_control::install_kick_handler()?;
    Ok(host)
}

/// What booting and restoring build alike: the devices and the vCPUs of
/// a VM whose memory exists.
struct Parts {
    vm: Vm,
    dm: DeviceManager,
    vcpus: Vec<Vcpu>,
    root: Option<String>,
    stop_evt: Arc<EventFd>,
    stop_tx: std::sync::mpsc::Sender<(u8, vcpu::StopReason)>,
    stop_rx: std::sync::mpsc::Receiver<(u8, vcpu::StopReason)>,
}

impl Parts {
    fn new(
        cfg: &VmConfig,
        opts: &RunOptions,
        vm: Vm,
        mem: &GuestMemoryMmap,
    ) -> Result<Parts, Error> {
        if usize::from(cfg.vcpus) > vm.max_vcpus() {
            return Err(Error::TooManyVcpus {
                asked: cfg.vcpus,
                max: vm.max_vcpus(),
            });
        }
        let mut dm = DeviceManager::new(&vm, opts.boot_timer)?;
        let root = virtio_devices::attach(cfg, &vm, mem, &mut dm)?;
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
        Ok(Parts {
            vm,
            dm,
            vcpus,
            root,
            stop_evt,
            stop_tx,
            stop_rx,
        })
    }

    /// Stop the VM when the page server filling its memory goes away.
    fn watch_page_server(&mut self, stream: std::os::unix::net::UnixStream) {
        let (tx, evt) = (self.stop_tx.clone(), self.stop_evt.clone());
        let gone = Box::new(move || {
            let why = "the page server closed its connection: the guest's memory can no \
                       longer be served";
            let _ = tx.send((0, vcpu::StopReason::Crash(why.into())));
            let _ = evt.write(1);
        });
        let watch = crate::snapshot::uffd::ServerWatch::new(stream, gone);
        self.dm.subscribers.push(Arc::new(Mutex::new(watch)));
    }

    /// The event loop and the control of the VM's end around the parts.
    fn finish(
        mut self,
        cfg: &VmConfig,
        opts: &RunOptions,
        host: HostKind,
        mem: GuestMemoryMmap,
    ) -> Result<Vmm, Error> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(|e| Error::EventLoop(e.to_string()))?;
        let dm = &mut self.dm;
        let ctl = Arc::new(Mutex::new(Control::new(
            self.stop_evt,
            self.stop_rx,
            dm.i8042.clone(),
            &dm.acpi_pm,
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
        let msr_list = crate::vstate::state::msr_list(self.vm.kvm())?.into();
        timer::mark(Phase::VmBuilt);
        Ok(Vmm {
            em,
            ctl,
            dm: self.dm,
            unstarted: self.vcpus,
            vcpus: Vec::new(),
            vm: self.vm,
            mem,
            uffd: None,
            host,
            state: VmState::Built,
            metrics: None,
            cfg: cfg.clone(),
            msr_list,
            vcpu_filter: opts.seccomp.get(crate::seccomp::ThreadKind::Vcpu),
            main_filter: opts.seccomp.get(crate::seccomp::ThreadKind::Main),
        })
    }
}

/// One microVM.
pub struct Vmm {
    // Field order is drop order: devices and vCPU handles go before the VM
    // and its memory.
    em: EventManager<Subscriber>,
    ctl: Arc<Mutex<Control>>,
    dm: DeviceManager,
    unstarted: Vec<Vcpu>,
    vcpus: Vec<VcpuHandle>,
    vm: Vm,
    mem: GuestMemoryMmap,
    /// The userfaultfd of memory a page server fills (a snapshot loaded
    /// with the Uffd backend), kept open as long as the memory: closed,
    /// the pages not yet served would read as zeros.
    uffd: Option<std::fs::File>,
    host: HostKind,
    state: VmState,
    metrics: Option<MetricsSink>,
    /// What the VM was built from (a snapshot carries it).
    cfg: VmConfig,
    /// The MSRs a snapshot saves (KVM's list, read while building: the
    /// main thread's seccomp filter has no /dev/kvm ioctls).
    msr_list: Arc<[u32]>,
    /// Each vCPU thread installs it before its first KVM_RUN.
    vcpu_filter: Option<Arc<seccompiler::BpfProgram>>,
    /// This (the main) thread installs it when the event loop starts,
    /// after the vCPU threads (which install their own).
    main_filter: Option<Arc<seccompiler::BpfProgram>>,
}

impl Vmm {
    /// Build the VM: memory, KVM VM, devices, vCPUs in their boot state.
    /// Nothing runs yet.
    pub fn build(cfg: &VmConfig, opts: &RunOptions) -> Result<Vmm, Error> {
        let host = prepare(cfg)?;
        boot::check_cmdline(&cfg.cmdline)?;
        let mem = memory::create(cfg.mem_mib)?;
        // Reading the kernel and initrd into guest memory and KVM's building
        // of the VM (irqchip, PIT, memory slots) are independent: overlap.
        let (images, vm) = std::thread::scope(|s| {
            let loader = s.spawn(|| boot::load_images(&mem, &cfg.kernel, cfg.initrd.as_deref()));
            let vm = Vm::new(&mem, cfg.track_dirty_pages);
            (loader.join(), vm)
        });
        let images = images.map_err(|_| Error::LoaderThread)??;
        let vm = vm?;
        let parts = Parts::new(cfg, opts, vm, &mem)?;
        let profile = match (host, opts.host_profile) {
            (HostKind::Pvm, true) => {
                let khz = parts.vcpus[0].tsc_khz().unwrap_or(0);
                (khz > 0).then(|| host::pvm_cmdline(khz))
            }
            _ => None,
        };
        let dm = &parts.dm;
        let on_cmdline = dm.registry.is_empty() || virtio_on_cmdline(images.kernel.virtio_cmdline);
        let (virtio_args, acpi_virtio) = if on_cmdline {
            (dm.cmdline.as_slice(), Vec::new())
        } else {
            (&[][..], dm.acpi_devices())
        };
        let cmdline = full_cmdline(cfg, virtio_args, parts.root.as_deref(), profile.as_deref());
        log::debug!("kernel command line: {cmdline}");
        let entry = boot::write_boot_data(
            &mem,
            &images,
            cfg.mem_mib,
            cfg.vcpus,
            &cmdline,
            &acpi_virtio,
        )?;
        let supported = vcpu::supported_cpuid(parts.vm.kvm())?;
        let threads = if cfg.smt { 2 } else { 1 };
        for v in &parts.vcpus {
            v.configure(&supported, entry.entry.0, cfg.vcpus, threads)?;
        }
        parts.finish(cfg, opts, host, mem)
    }

    /// Build the VM a snapshot describes, its memory from `source` (the
    /// memory file mapped privately, or a page server's) and every vCPU and
    /// device put back as it was. Nothing runs yet.
    pub fn restore(
        snap: &crate::snapshot::MicrovmState,
        source: crate::snapshot::MemSource,
        opts: &RunOptions,
    ) -> Result<Vmm, Error> {
        use crate::snapshot::{self, MemSource};
        let cfg = &snap.config;
        let host = prepare(cfg)?;
        snap.check()?;
        let (mem, uffd) = match source {
            MemSource::File(path) => {
                let ranges = memory::ram_ranges(cfg.mem_mib);
                let mem = snapshot::memory::map(path, &ranges, cfg.mem_mib)
                    .map_err(snapshot::Error::from)?;
                (mem, None)
            }
            // Handed over before anything touches the memory: from then
            // on every first touch is the page server's to fill.
            MemSource::Uffd(socket) => {
                let mem = memory::create(cfg.mem_mib)?;
                let handed =
                    snapshot::uffd::hand_over(&mem, socket).map_err(snapshot::Error::from)?;
                (mem, Some(handed))
            }
        };
        let vm = Vm::new(&mem, cfg.track_dirty_pages)?;
        crate::vstate::state::restore_vm(vm.fd(), &snap.vm)?;
        let mut parts = Parts::new(cfg, opts, vm, &mem)?;
        // The vCPUs first: an interrupt a device raises again as it is
        // restored then reaches a restored LAPIC.
        for (v, s) in parts.vcpus.iter().zip(&snap.vcpus) {
            v.restore(s)?;
        }
        parts
            .dm
            .restore_state(&snap.devices, &parts.vm)
            .map_err(snapshot::Error::from)?;
        let uffd = uffd.map(|h| {
            parts.watch_page_server(h.stream);
            h.uffd
        });
        let mut vmm = parts.finish(cfg, opts, host, mem)?;
        vmm.uffd = uffd;
        Ok(vmm)
    }

    /// Start the vCPU threads.
    pub fn start(&mut self) -> Result<(), Error> {
        self.start_threads(false)
    }

    /// Start the vCPU threads paused: the guest runs once resumed (a
    /// snapshot loaded without `resume_vm`).
    pub fn start_paused(&mut self) -> Result<(), Error> {
        self.start_threads(true)?;
        for v in &self.vcpus {
            v.wait_paused(VCPU_ANSWER_TIMEOUT)?;
        }
        Ok(())
    }

    fn start_threads(&mut self, paused: bool) -> Result<(), Error> {
        if self.state != VmState::Built {
            return Err(Error::State("started"));
        }
        for v in self.unstarted.drain(..) {
            self.vcpus.push(v.start(self.vcpu_filter.clone(), paused)?);
        }
        self.state = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        Ok(())
    }

    /// Write a snapshot of the paused VM: its state to `snapshot_path`
    /// (to a temporary name, then renamed); its memory to `mem_file_path`
    /// (Full: the same way), or (Diff) only the pages written since the
    /// last snapshot, into that snapshot's memory file at `mem_file_path`.
    pub fn snapshot(&mut self, p: &crate::snapshot::CreateParams) -> Result<(), Error> {
        use crate::snapshot::{self, MicrovmState, SnapshotType};
        if self.state != VmState::Paused {
            return Err(Error::NotPaused);
        }
        let diff = p.snapshot_type == SnapshotType::Diff;
        if diff && !self.cfg.track_dirty_pages {
            return Err(snapshot::Error::Diff.into());
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &self.vcpus {
            vcpus.push(v.save_state(self.msr_list.clone(), VCPU_ANSWER_TIMEOUT)?);
        }
        let state = MicrovmState {
            config: self.cfg.clone(),
            vm: crate::vstate::state::save_vm(self.vm.fd())?,
            vcpus,
            devices: self.dm.save_state().map_err(snapshot::Error::from)?,
        };
        let written = if diff {
            let logs = self.vm.dirty_logs(&self.mem)?;
            snapshot::memory::save_dirty(&self.mem, &p.mem_file_path, &logs)
        } else {
            snapshot::memory::save(&self.mem, &p.mem_file_path)
        }
        .map_err(snapshot::Error::from)?;
        if !diff && self.cfg.track_dirty_pages {
            // The next Diff holds what changes after this Full snapshot.
            self.vm.dirty_logs(&self.mem)?;
            snapshot::memory::clear_dirty(&self.mem);
        }
        snapshot::format::write(&p.snapshot_path, &state).map_err(snapshot::Error::from)?;
        log::info!(
            "snapshot ({:?}): state in {}, memory in {} ({written} bytes of data)",
            p.snapshot_type,
            p.snapshot_path.display(),
            p.mem_file_path.display()
        );
        Ok(())
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn host(&self) -> HostKind {
        self.host
    }

    pub fn devices(&self) -> &DeviceManager {
        &self.dm
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Where metrics go from now on (flushed by the loop and at exit).
    pub fn set_metrics(&mut self, sink: Option<MetricsSink>) {
        self.metrics = sink;
    }

    pub fn metrics_mut(&mut self) -> Option<&mut MetricsSink> {
        self.metrics.as_mut()
    }

    /// Wake the event loop whenever `evt` is written (the API's requests).
    pub fn add_wakeup(&mut self, evt: EventFd) {
        self.em.add_subscriber(Arc::new(Mutex::new(Waker(evt))));
    }

    /// Stop every vCPU: each leaves KVM_RUN and waits for [`Vmm::resume`].
    pub fn pause(&mut self) -> Result<(), Error> {
        match self.state {
            VmState::Running => {}
            VmState::Paused => return Ok(()),
            VmState::Built => return Err(Error::State("not started")),
        }
        for v in &self.vcpus {
            v.request_pause()?;
        }
        for v in &self.vcpus {
            v.wait_paused(VCPU_ANSWER_TIMEOUT)?;
        }
        self.state = VmState::Paused;
        Ok(())
    }

    /// Let paused vCPUs run again.
    pub fn resume(&mut self) -> Result<(), Error> {
        match self.state {
            VmState::Paused => {}
            VmState::Running => return Ok(()),
            VmState::Built => return Err(Error::State("not started")),
        }
        for v in &self.vcpus {
            v.request_resume()?;
        }
        for v in &self.vcpus {
            v.wait_resumed(VCPU_ANSWER_TIMEOUT)?;
        }
        self.state = VmState::Running;
        Ok(())
    }

    /// Press Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), Error> {
        devices::bus::lock(&self.dm.i8042)
            .trigger_ctrl_alt_del()
            .map_err(|e| Error::CtrlAltDel(e.to_string()))
    }

    /// Point drive `id` at another image file; the guest is told its new
    /// size with a configuration-change interrupt.
    pub fn swap_drive(&mut self, id: &str, path: &std::path::Path) -> Result<(), Error> {
        let entry = self.dm.find(id).ok_or_else(|| Error::Drive {
            id: id.to_string(),
            why: "no drive with this id".into(),
        })?;
        let VirtioHandle::Block(block) = &entry.handle else {
            return Err(Error::Drive {
                id: id.to_string(),
                why: "not a drive".into(),
            });
        };
        devices::bus::lock(block)
            .swap_backing(path)
            .map_err(|e| Error::Drive {
                id: id.to_string(),
                why: e.to_string(),
            })?;
        devices::bus::lock(&entry.transport).config_changed();
        Ok(())
    }

    /// Set the balloon's target: the guest is told with a
    /// configuration-change interrupt and inflates or deflates to it.
    pub fn update_balloon(&mut self, amount_mib: u32) -> Result<(), Error> {
        crate::config::services::check_balloon_target(amount_mib, self.cfg.mem_mib)?;
        let (balloon, _) = self.dm.balloon().ok_or(Error::NoBalloon)?;
        devices::bus::lock(balloon).update_target(amount_mib)?;
        Ok(())
    }

    /// Change how often the guest reports its memory statistics (not from
    /// or to 0: the statistics queue is set up at boot).
    pub fn update_balloon_stats_interval(&mut self, secs: u16) -> Result<(), Error> {
        let (balloon, _) = self.dm.balloon().ok_or(Error::NoBalloon)?;
        devices::bus::lock(balloon).update_stats_interval(secs)?;
        Ok(())
    }

    /// Firecracker's `GET /balloon/statistics` body.
    pub fn balloon_stats(&self) -> Result<serde_json::Value, Error> {
        let (balloon, _) = self.dm.balloon().ok_or(Error::NoBalloon)?;
        let s = devices::bus::lock(balloon).latest_stats()?;
        Ok(crate::api::balloon_stats_json(&s))
    }

    /// Write a metrics line now, if metrics are configured.
    pub fn flush_metrics(&mut self) -> Result<(), crate::metrics::Error> {
        match &mut self.metrics {
            Some(m) => m.flush(Some(&self.dm)),
            None => Err(crate::metrics::Error::NotSet),
        }
    }

    /// Run the event loop until the guest ends. After every wake-up (a
    /// device, a timer, the API) `hook` may act on the VM.
    pub fn run(&mut self, hook: &mut dyn FnMut(&mut Vmm)) -> Result<Outcome, Error> {
        if self.state == VmState::Built {
            self.start()?;
        }
        if let Some(f) = self.main_filter.take() {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Main, &f)?;
        }
        loop {
            // The timeout bounds how long a partial console line (a
            // prompt, an echoed key) waits for its newline.
            if let Err(e) = self.em.run_with_timeout(CONSOLE_FLUSH_MS) {
                if e != event_manager::Error::Epoll(vmm_sys_util::errno::Error::new(libc::EINTR)) {
                    return Err(Error::EventLoop(e.to_string()));
                }
            }
            // A failing stdout is counted by the serial device.
            let _ = devices::bus::lock(&self.dm.serial)
                .output_mut()
                .flush_pending();
            hook(self);
            if let Some(m) = &mut self.metrics {
                m.flush_if_due(Some(&self.dm));
            }
            let outcome = devices::bus::lock(&self.ctl).outcome().cloned();
            if let Some(outcome) = outcome {
                self.dm.remove_host_sockets();
                if let Some(m) = &mut self.metrics {
                    if let Err(e) = m.flush(Some(&self.dm)) {
                        log::warn!("{e}");
                    }
                }
                return Ok(outcome);
            }
        }
    }
}

/// Build and run the VM until the guest ends; returns how it ended.
pub fn run(cfg: &VmConfig, opts: &RunOptions) -> Result<Outcome, Error> {
    let mut vmm = Vmm::build(cfg, opts)?;
    vmm.start()?;
    let outcome = vmm.run(&mut |_| {});
    // The vCPU threads may still be inside KVM_RUN: the VM and its memory
    // must outlive them, which they do because the process exits next.
    std::mem::forget(vmm);
    outcome
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
            smt: false,
            track_dirty_pages: false,
            drives: vec![],
            nets: vec![],
            vsock: None,
            entropy: None,
            balloon: None,
        };
        let v = vec!["virtio_mmio.device=4K@0xc0001000:5".to_string()];
        assert_eq!(
            full_cmdline(&cfg, &v, Some("root=/dev/vda rw"), Some("nopv")),
            "console=ttyS0 virtio_mmio.device=4K@0xc0001000:5 root=/dev/vda rw nopv"
        );
        assert_eq!(full_cmdline(&cfg, &[], None, None), "console=ttyS0");
    }

    #[test]
    fn virtio_devices_go_on_the_command_line_only_when_the_kernel_takes_them() {
        assert!(virtio_on_cmdline(VirtioCmdline::Supported));
        assert!(!virtio_on_cmdline(VirtioCmdline::Absent));
        assert!(!virtio_on_cmdline(VirtioCmdline::Unknown));
    }
}
