//! The VMM's own event loop subscriber: vCPU stop reports, the guest's
//! keyboard-controller reset, its ACPI power-off and reset, host signals (graceful shutdown through
//! Ctrl-Alt-Del), and host stdin feeding the guest's serial port.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::lock;
use devices::legacy::{AcpiPmDevice, I8042Device};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::device_manager::Serial;
use crate::vstate::vcpu::StopReason;

/// Errors from setting up the control channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot create an event loop descriptor: {0}")]
    Fd(std::io::Error),
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Guest(StopReason),
    /// The guest did not shut down in time after a host signal.
    ShutdownTimeout {
        signal: i32,
        waited: Duration,
    },
    /// A second signal while the guest was shutting down.
    ForcedBySignal(i32),
}

const SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in SIGNALS {
        // SAFETY: `set` is valid and `s` a real signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Block the shutdown signals in this thread and every thread it starts
/// after; they are then read from a signalfd. Call before starting threads.
pub fn block_signals() -> Result<(), Error> {
    let set = signal_set();
    // SAFETY: `set` is valid; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Error::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// A signalfd for the shutdown signals (blocked by [`block_signals`]).
pub fn signalfd() -> Result<File, Error> {
    let set = signal_set();
    // SAFETY: -1 asks for a new descriptor; `set` is valid.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Signals(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The control subscriber.
pub struct Control {
    stop_evt: Arc<EventFd>,
    stop_rx: Receiver<(u8, StopReason)>,
    reset_evt: EventFd,
    acpi_reset_evt: EventFd,
    acpi_power_off_evt: EventFd,
    signals: File,
    i8042: Arc<Mutex<I8042Device>>,
    serial: Arc<Mutex<Serial>>,
    drained_evt: EventFd,
    stdin_open: bool,
    stdin_watched: bool,
    pending_input: Vec<u8>,
    shutdown_timer: TimerFd,
    shutdown_timeout: Duration,
    shutdown_signal: Option<i32>,
    outcome: Option<Outcome>,
}

impl Control {
    pub fn new(
        stop_evt: Arc<EventFd>,
        stop_rx: Receiver<(u8, StopReason)>,
        i8042: Arc<Mutex<I8042Device>>,
        acpi_pm: &Arc<Mutex<AcpiPmDevice>>,
        serial: Arc<Mutex<Serial>>,
        shutdown_timeout: Duration,
    ) -> Result<Self, Error> {
        let reset_evt = lock(&i8042).reset_evt().try_clone().map_err(Error::Fd)?;
        let (acpi_reset_evt, acpi_power_off_evt) = {
            let pm = lock(acpi_pm);
            (
                pm.reset_evt().try_clone().map_err(Error::Fd)?,
                pm.power_off_evt().try_clone().map_err(Error::Fd)?,
            )
        };
        let drained_evt = lock(&serial)
            .fifo_drained_evt()
            .try_clone()
            .map_err(Error::Fd)?;
        Ok(Control {
            stop_evt,
            stop_rx,
            reset_evt,
            acpi_reset_evt,
            acpi_power_off_evt,
            signals: signalfd()?,
            i8042,
            serial,
            drained_evt,
            stdin_open: true,
            stdin_watched: false,
            pending_input: Vec::new(),
            shutdown_timer: TimerFd::new()
                .map_err(|e| Error::Fd(std::io::Error::from_raw_os_error(e.errno())))?,
            shutdown_timeout,
            shutdown_signal: None,
            outcome: None,
        })
    }

    /// How the VM ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn on_signal(&mut self) {
        let mut info = [0u8; 128]; // struct signalfd_siginfo
        let signo = match self.signals.read(&mut info) {
            Ok(n) if n >= 4 => i32::from_ne_bytes([info[0], info[1], info[2], info[3]]),
            _ => return,
        };
        if self.shutdown_signal.is_some() {
            eprintln!("flint: second signal {signo}; stopping the guest now");
            self.finish(Outcome::ForcedBySignal(signo));
            return;
        }
        self.shutdown_signal = Some(signo);
        eprintln!(
            "flint: signal {signo}: asking the guest to reboot (Ctrl-Alt-Del), waiting up to {}s",
            self.shutdown_timeout.as_secs()
        );
        let sent = lock(&self.i8042).trigger_ctrl_alt_del();
        if let Err(e) = sent {
            eprintln!("flint: cannot send Ctrl-Alt-Del ({e}); stopping the guest now");
            self.finish(Outcome::ForcedBySignal(signo));
            return;
        }
        if self
            .shutdown_timer
            .reset(self.shutdown_timeout, None)
            .is_err()
        {
            self.finish(Outcome::ForcedBySignal(signo));
        }
    }

    fn watch_stdin(&mut self, ops: &mut EventOps, on: bool) {
        if !self.stdin_open || on == self.stdin_watched {
            return;
        }
        let stdin = std::io::stdin();
        let ev = Events::new(&stdin, EventSet::IN);
        let ok = if on {
            ops.add(ev).is_ok()
        } else {
            ops.remove(ev).is_ok()
        };
        if on && !ok {
            // Not pollable (a regular file, /dev/null): the guest gets no input.
            self.stdin_open = false;
            return;
        }
        self.stdin_watched = on && ok;
    }

    fn feed_serial(&mut self) -> usize {
        if self.pending_input.is_empty() {
            return 0;
        }
        let taken = lock(&self.serial)
            .enqueue_input(&self.pending_input)
            .unwrap_or(0);
        self.pending_input.drain(..taken);
        taken
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a buffer we own, of the length we pass.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                self.watch_stdin(ops, false);
                self.stdin_open = false;
            }
            return;
        }
        self.pending_input.extend_from_slice(&buf[..n as usize]);
        self.feed_serial();
        if !self.pending_input.is_empty() {
            // The guest's FIFO is full: wait for it to drain.
            self.watch_stdin(ops, false);
        }
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.stop_evt.as_raw_fd(),
            self.reset_evt.as_raw_fd(),
            self.acpi_reset_evt.as_raw_fd(),
            self.acpi_power_off_evt.as_raw_fd(),
            self.signals.as_raw_fd(),
            self.drained_evt.as_raw_fd(),
            self.shutdown_timer.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                eprintln!("flint: cannot watch descriptor {fd}: {e}");
            }
        }
        self.watch_stdin(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.stop_evt.as_raw_fd() {
            let _ = self.stop_evt.read();
            if let Ok((_, reason)) = self.stop_rx.try_recv() {
                self.finish(Outcome::Guest(reason));
            }
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.finish(Outcome::Guest(StopReason::Reboot));
        } else if fd == self.acpi_reset_evt.as_raw_fd() {
            let _ = self.acpi_reset_evt.read();
            self.finish(Outcome::Guest(StopReason::Reboot));
        } else if fd == self.acpi_power_off_evt.as_raw_fd() {
            let _ = self.acpi_power_off_evt.read();
            self.finish(Outcome::Guest(StopReason::PowerOff));
        } else if fd == self.signals.as_raw_fd() {
            self.on_signal();
        } else if fd == self.shutdown_timer.as_raw_fd() {
            let _ = self.shutdown_timer.wait();
            let signal = self.shutdown_signal.unwrap_or(0);
            self.finish(Outcome::ShutdownTimeout {
                signal,
                waited: self.shutdown_timeout,
            });
        } else if fd == self.drained_evt.as_raw_fd() {
            let _ = self.drained_evt.read();
            self.feed_serial();
            if self.pending_input.is_empty() {
                self.watch_stdin(ops, true);
            }
        } else if fd == libc::STDIN_FILENO {
            self.on_stdin(ops);
        }
    }
}
