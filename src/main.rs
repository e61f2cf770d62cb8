//! The `flint` command: flags and config file in, a microVM run, an exit
//! status out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flint::api::handler::{self, ApiState, StartWait};
use flint::api::{self, Response};
use flint::builder::VmResources;
use flint::config::{self, Overrides};
use flint::control::{self, Outcome};
use flint::seccomp::{self, Filters, ThreadKind};
use flint::timer::{self, Phase};
use flint::vmm::{self, RunOptions, Vmm};
use flint::vstate::vcpu::StopReason;

/// Exit statuses, documented in README.md.
const EXIT_ERROR: u8 = 1;
const EXIT_GUEST_CRASH: u8 = 3;
const EXIT_FORCED_STOP: u8 = 4;

/// flint boots a Linux microVM on KVM: guest memory, a kernel, vCPUs, a
/// serial console, virtio block and net devices.
///
/// The guest's console is this terminal (stdin in raw mode). flint exits 0
/// when the guest reboots or powers off; SIGTERM or SIGINT ask the guest to
/// reboot (Ctrl-Alt-Del) and stop it after --shutdown-timeout.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    after_help = "\
EXIT STATUS:
  0  the guest rebooted or powered off
  1  bad configuration or the VM could not be built (the message says why)
  2  bad command-line usage
  3  the guest crashed (triple fault, or an exit flint cannot handle)
  4  the guest did not stop in time after a signal and was stopped
  148  a flint thread made a system call its seccomp filter forbids

Flags override the config file; --drive and --net add to its lists."
)]
struct Cli {
    /// Guest kernel: an x86-64 ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio archive, compressed or not).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line; replaces the default
    /// (flint adds its devices, root= and host parameters after it).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Words added to the end of the kernel command line (the default one,
    /// or --cmdline's), e.g. --append "flint.cmd=uname,-a".
    #[arg(long, value_name = "STR")]
    append: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// JSON config file with Firecracker's keys: boot-source,
    /// machine-config, drives, network-interfaces.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// A disk: path=FILE[,id=ID][,ro=on][,root=on][,cache=unsafe|writeback][,engine=sync|async].
    /// Repeatable.
    #[arg(long, value_name = "SPEC")]
    drive: Vec<String>,
    /// A network interface on a TAP device: tap=NAME[,mac=MAC][,id=ID][,mtu=N].
    /// Repeatable.
    #[arg(long, value_name = "SPEC")]
    net: Vec<String>,
    /// A virtio-vsock device: cid=N,uds=PATH. Host programs connect to the
    /// unix socket PATH and send "CONNECT <port>\n" to reach a guest
    /// listener; guest connections to the host's port P go to PATH_P.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,
    /// A virtio-rng entropy device fed from the host's getrandom:
    /// on, or bytes_per_s=N to rate-limit it.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "on")]
    entropy: Option<String>,
    /// A virtio-balloon device: mib=N[,deflate_on_oom=on][,stats=SECS]
    /// (N MiB taken from the guest at boot; PATCH /balloon changes it).
    #[arg(long, value_name = "SPEC")]
    balloon: Option<String>,
    /// Restore the microVM of this snapshot state file (written by PUT
    /// /snapshot/create) instead of booting one; needs --mem-file or
    /// --mem-uffd. The snapshot brings its own kernel state, devices and
    /// configuration.
    #[arg(long, value_name = "FILE", requires = "memory_backend",
          conflicts_with_all = ["kernel", "initrd", "cmdline", "append", "vcpus", "memory",
                                "config_file", "drive", "net", "vsock", "entropy", "balloon"])]
    restore: Option<PathBuf>,
    /// The snapshot's memory file, for --restore (mapped privately: it is
    /// only read, page by page as the guest touches them).
    #[arg(
        long,
        value_name = "FILE",
        requires = "restore",
        group = "memory_backend"
    )]
    mem_file: Option<PathBuf>,
    /// For --restore: the unix socket of a page server (such as
    /// flint-uffd-server) that fills the guest's memory on demand over a
    /// userfaultfd (Firecracker's Uffd backend).
    #[arg(
        long,
        value_name = "SOCKET",
        requires = "restore",
        group = "memory_backend"
    )]
    mem_uffd: Option<PathBuf>,
    /// Print the boot phases (ms since launch) at exit, and the guest's
    /// boot-timer write when it happens.
    #[arg(long)]
    boot_timer: bool,
    /// Seconds to wait for the guest to reboot after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
    /// Do not add the kernel parameters flint adds on hosts without
    /// hardware virtualization (kvm_pvm).
    #[arg(long)]
    no_host_profile: bool,
    /// How much flint itself logs on stderr: off, error, warn, info, debug
    /// (debug shows the full kernel command line), trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn", value_parser = flint::logger::parse_level)]
    log_level: log::LevelFilter,
    /// Serve Firecracker's REST API on this unix socket (the path must not
    /// exist). Without --config-file the VM starts on PUT /actions
    /// InstanceStart; with it, at once, and the API stays up.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Do not serve the API (Firecracker's flag; needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Instance id shown by GET / and in the log file: letters, digits and
    /// '-', at most 64.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance", value_parser = parse_id)]
    id: String,
    /// Write flint's log to this file or FIFO instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Log level, Firecracker's spelling (Error, Warning, Info, Debug,
    /// Trace, Off); overrides --log-level.
    #[arg(long, value_name = "LEVEL", value_parser = flint::logger::parse_level)]
    level: Option<log::LevelFilter>,
    /// In the log file, show each line's level.
    #[arg(long)]
    show_level: bool,
    /// In the log file, show each line's source file and line.
    #[arg(long)]
    show_log_origin: bool,
    /// Write metrics (JSON lines: every 60 s, on FlushMetrics and at exit)
    /// to this file or FIFO.
    #[arg(long, value_name = "PATH")]
    metrics_path: Option<PathBuf>,
    /// Install no seccomp filters (by default every flint thread runs
    /// under flint's built-in allow-list for its kind).
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,
    /// Use the seccomp filters in FILE, compiled by flint-seccompiler (or
    /// Firecracker's seccompiler-bin) with filters named main, vcpu and api,
    /// instead of the built-in ones.
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
}

fn parse_id(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: an id is 1 to 64 characters, each a letter, a digit or '-'"
        ))
    }
}

/// The VM as the config file and the flags describe it.
fn load_resources(cli: &Cli) -> Result<VmResources, config::Error> {
    let file = match &cli.config_file {
        Some(p) => config::load_file(p)?,
        None => config::FileConfig::default(),
    };
    let drives = cli
        .drive
        .iter()
        .enumerate()
        .map(|(i, d)| config::parse_drive_flag(d, file.drives.len() + i))
        .collect::<Result<Vec<_>, _>>()?;
    let nets = cli
        .net
        .iter()
        .enumerate()
        .map(|(i, n)| config::parse_net_flag(n, file.network_interfaces.len() + i))
        .collect::<Result<Vec<_>, _>>()?;
    let vsock = cli.vsock.as_deref().map(config::services::parse_vsock_flag);
    let entropy = cli
        .entropy
        .as_deref()
        .map(config::services::parse_entropy_flag);
    let balloon = cli
        .balloon
        .as_deref()
        .map(config::services::parse_balloon_flag);
    let mut resources = VmResources::from_file(file)?;
    resources.apply_flags(Overrides {
        kernel: cli.kernel.clone(),
        initrd: cli.initrd.clone(),
        cmdline: cli.cmdline.clone(),
        append: cli.append.clone(),
        vcpus: cli.vcpus,
        mem_mib: cli.memory,
        drives,
        nets,
        vsock: vsock.transpose()?,
        entropy: entropy.transpose()?,
        balloon: balloon.transpose()?,
    });
    Ok(resources)
}

/// The seccomp filters the flags ask for.
fn seccomp_filters(cli: &Cli) -> Result<Filters, seccomp::Error> {
    match (&cli.seccomp_filter, cli.no_seccomp) {
        (_, true) => Ok(Filters::none()),
        (Some(path), false) => Filters::from_file(path),
        (None, false) => Filters::builtin(api_socket(cli).is_some()),
    }
}

/// The socket to serve the API on, unless `--no-api` says not to.
fn api_socket(cli: &Cli) -> Option<&Path> {
    cli.api_sock.as_deref().filter(|_| !cli.no_api)
}

fn run_options(cli: &Cli, seccomp: &Filters) -> RunOptions {
    RunOptions {
        boot_timer: cli.boot_timer,
        shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
        host_profile: !cli.no_host_profile,
        seccomp: seccomp.clone(),
    }
}

/// The exit status for how the VM ended, with its one-line message.
fn exit_code(result: Result<Outcome, vmm::Error>) -> u8 {
    match result {
        Err(e) => {
            eprintln!("flint: {e}");
            EXIT_ERROR
        }
        Ok(Outcome::Guest(StopReason::Reboot)) => {
            eprintln!("flint: the guest rebooted; exiting");
            0
        }
        Ok(Outcome::Guest(StopReason::PowerOff)) => {
            eprintln!("flint: the guest powered off; exiting");
            0
        }
        Ok(Outcome::Guest(StopReason::Crash(msg))) => {
            eprintln!("flint: guest stopped: {msg}");
            EXIT_GUEST_CRASH
        }
        Ok(Outcome::ShutdownTimeout { signal, waited }) => {
            eprintln!(
                "flint: the guest did not reboot within {}s of signal {signal}; stopped it",
                waited.as_secs()
            );
            EXIT_FORCED_STOP
        }
        Ok(Outcome::ForcedBySignal(signal)) => {
            eprintln!("flint: stopped the guest on signal {signal}");
            EXIT_FORCED_STOP
        }
    }
}

/// Logger and metrics from the flags, the same as PUT /logger and PUT
/// /metrics would set them.
fn apply_log_and_metrics_flags(cli: &Cli, st: &mut ApiState) -> Result<(), String> {
    let file_logger = st.resources.logger.take();
    if cli.log_path.is_some() || cli.level.is_some() || file_logger.is_some() {
        let mut l = file_logger.unwrap_or_default();
        if cli.log_path.is_some() {
            l.log_path = cli.log_path.clone();
        }
        if let Some(level) = cli.level {
            l.level = Some(level.to_string());
        }
        l.show_level |= cli.show_level;
        l.show_log_origin |= cli.show_log_origin;
        st.set_logger(l)?;
    }
    let path = match (&cli.metrics_path, st.resources.metrics.take()) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(m)) => Some(m.metrics_path),
        (None, None) => None,
    };
    if let Some(p) = path {
        st.set_metrics(&p)?;
    }
    Ok(())
}

/// Build and start the VM the resources describe; `over_api` words a
/// missing kernel for an API client.
fn start_vm(st: &mut ApiState, opts: &RunOptions, over_api: bool) -> Result<Vmm, String> {
    log::info!("InstanceStart: building the VM");
    let cfg = st.resources.build().map_err(|e| match e {
        config::Error::NoKernel if over_api => "no kernel: PUT /boot-source first".to_string(),
        e => e.to_string(),
    })?;
    let mut vmm = Vmm::build(&cfg, opts).map_err(|e| e.to_string())?;
    vmm.set_metrics(st.metrics.take());
    vmm.start().map_err(|e| e.to_string())?;
    Ok(vmm)
}

/// Restore the microVM of a snapshot (`PUT /snapshot/load` or --restore),
/// its vCPUs running with `resume`, else paused.
fn load_snapshot(
    st: &mut ApiState,
    opts: &RunOptions,
    p: &flint::snapshot::LoadParams,
) -> Result<Vmm, String> {
    use flint::snapshot::{format, MicrovmState};
    log::info!("loading the snapshot {}", p.snapshot_path.display());
    let mem = p.mem_source().map_err(|e| e.to_string())?;
    let (_, mut snap): (_, MicrovmState) =
        format::read(&p.snapshot_path).map_err(|e| e.to_string())?;
    snap.apply_overrides(&p.network_overrides)
        .map_err(|e| e.to_string())?;
    // As in Firecracker, the load request decides whether the restored VM
    // tracks dirty pages (for a Diff snapshot of it later).
    snap.config.track_dirty_pages = p.track_dirty_pages || p.enable_diff_snapshots;
    let mut vmm = Vmm::restore(&snap, mem, opts).map_err(|e| e.to_string())?;
    vmm.set_metrics(st.metrics.take());
    if p.resume_vm {
        vmm.start()
    } else {
        vmm.start_paused()
    }
    .map_err(|e| e.to_string())?;
    Ok(vmm)
}

/// flint with the API: serve until InstanceStart (or boot from the config
/// file at once), then run the VM with the API still up.
fn run_api(cli: &Cli, sock: &Path, mut st: ApiState, filters: &Filters) -> u8 {
    let opts = run_options(cli, filters);
    // Before any thread starts, so the API threads leave the shutdown
    // signals to the signalfd.
    if let Err(e) = control::block_signals() {
        eprintln!("flint: {e}");
        return EXIT_ERROR;
    }
    let mut signals = match control::signalfd() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flint: {e}");
            return EXIT_ERROR;
        }
    };
    let chan = match api::server::start(sock, filters.get(ThreadKind::Api)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flint: {e}");
            return EXIT_ERROR;
        }
    };
    let remove_socket = || {
        let _ = std::fs::remove_file(sock);
    };
    let mut vmm = if cli.config_file.is_some() {
        match start_vm(&mut st, &opts, false) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("flint: {e}");
                remove_socket();
                return EXIT_ERROR;
            }
        }
    } else {
        loop {
            match handler::serve_until_start(&chan, &mut st, &mut signals) {
                StartWait::Start(reply) => match start_vm(&mut st, &opts, true) {
                    Ok(v) => {
                        let _ = reply.send(Response::NoContent);
                        break v;
                    }
                    Err(e) => {
                        let _ = reply.send(Response::Fault(format!("InstanceStart: {e}")));
                    }
                },
                StartWait::Load(p, reply) => match load_snapshot(&mut st, &opts, &p) {
                    Ok(v) => {
                        let _ = reply.send(Response::NoContent);
                        break v;
                    }
                    Err(e) => {
                        let _ = reply.send(Response::Fault(format!("PUT /snapshot/load: {e}")));
                    }
                },
                StartWait::Signal(sig) => {
                    eprintln!("flint: signal {sig} before the VM started; exiting");
                    remove_socket();
                    return 0;
                }
                StartWait::Closed => {
                    remove_socket();
                    return EXIT_ERROR;
                }
            }
        }
    };
    drop(signals);
    match chan.wake.try_clone() {
        Ok(w) => vmm.add_wakeup(w),
        Err(e) => eprintln!("flint: the API cannot wake the event loop: {e}"),
    }
    flint::terminal::enter_raw_mode();
    let result = vmm.run(&mut |vmm| handler::serve_running(&chan, &mut st, vmm));
    flint::terminal::restore();
    remove_socket();
    // The VM is still alive; its teardown happens after we are gone.
    std::mem::forget(vmm);
    flint::teardown::hand_off();
    exit_code(result)
}

fn run(cli: &Cli) -> u8 {
    let resources = match load_resources(cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flint: {e}");
            return EXIT_ERROR;
        }
    };
    let filters = match seccomp_filters(cli) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("flint: {e}");
            return EXIT_ERROR;
        }
    };
    timer::mark(Phase::ConfigParsed);
    let mut st = ApiState::new(resources, cli.id.clone());
    if let Err(e) = apply_log_and_metrics_flags(cli, &mut st) {
        eprintln!("flint: {e}");
        return EXIT_ERROR;
    }
    if let Some(sock) = api_socket(cli) {
        return run_api(cli, sock, st, &filters);
    }
    let opts = run_options(cli, &filters);
    let vmm = match &cli.restore {
        Some(state) => {
            use flint::snapshot::{BackendType, MemBackend};
            let mem_backend = match (&cli.mem_file, &cli.mem_uffd) {
                (_, Some(socket)) => MemBackend {
                    backend_type: BackendType::Uffd,
                    backend_path: socket.clone(),
                },
                (mem, None) => MemBackend {
                    backend_type: BackendType::File,
                    backend_path: mem.clone().unwrap_or_default(),
                },
            };
            let p = flint::snapshot::LoadParams {
                snapshot_path: state.clone(),
                mem_backend: Some(mem_backend),
                mem_file_path: None,
                enable_diff_snapshots: false,
                track_dirty_pages: false,
                resume_vm: true,
                network_overrides: Vec::new(),
            };
            load_snapshot(&mut st, &opts, &p)
        }
        None => st
            .resources
            .build()
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let mut vmm = Vmm::build(&cfg, &opts).map_err(|e| e.to_string())?;
                vmm.set_metrics(st.metrics.take());
                vmm.start().map_err(|e| e.to_string())?;
                Ok(vmm)
            }),
    };
    let mut vmm = match vmm {
        Ok(v) => v,
        Err(e) => {
            eprintln!("flint: {e}");
            return EXIT_ERROR;
        }
    };
    flint::terminal::enter_raw_mode();
    let result = {
        let r = vmm.run(&mut |_| {});
        // The vCPU threads may still be in KVM_RUN: the VM must outlive
        // them, and does, since the process exits next.
        std::mem::forget(vmm);
        r
    };
    flint::terminal::restore();
    if result.is_ok() {
        // The VM is still alive; let its teardown happen after we are gone.
        flint::teardown::hand_off();
    }
    exit_code(result)
}

fn main() -> ExitCode {
    timer::start();
    let cli = Cli::parse();
    flint::logger::init(cli.level.unwrap_or(cli.log_level));
    let code = run(&cli);
    if cli.boot_timer {
        eprint!("{}", timer::report());
    }
    // vCPU threads may still be inside KVM_RUN; exiting the process ends
    // them without waiting.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code));
}
