//! The `flint` command: flags and config file in, a microVM run, an exit
//! status out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flint::builder::VmResources;
use flint::config::{self, Overrides};
use flint::control::Outcome;
use flint::timer::{self, Phase};
use flint::vmm::{self, RunOptions};
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
    let mut resources = VmResources::from_file(file)?;
    resources.apply_flags(Overrides {
        kernel: cli.kernel.clone(),
        initrd: cli.initrd.clone(),
        cmdline: cli.cmdline.clone(),
        vcpus: cli.vcpus,
        mem_mib: cli.memory,
        drives,
        nets,
    });
    Ok(resources)
}

fn run(cli: &Cli) -> u8 {
    let cfg = match load_resources(cli).and_then(|r| r.build()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flint: {e}");
            return EXIT_ERROR;
        }
    };
    timer::mark(Phase::ConfigParsed);
    let opts = RunOptions {
        boot_timer: cli.boot_timer,
        shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
        host_profile: !cli.no_host_profile,
    };
    flint::terminal::enter_raw_mode();
    let result = vmm::run(&cfg, &opts);
    flint::terminal::restore();
    if result.is_ok() {
        // The VM is still alive; let its teardown happen after we are gone.
        flint::teardown::hand_off();
    }
    let code = match result {
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
    };
    if cli.boot_timer {
        eprint!("{}", timer::report());
    }
    code
}

fn main() -> ExitCode {
    timer::start();
    let cli = Cli::parse();
    flint::logger::init(cli.log_level);
    let code = run(&cli);
    // vCPU threads may still be inside KVM_RUN; exiting the process ends
    // them without waiting.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code));
}
