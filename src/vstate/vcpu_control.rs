//! The VMM's hold on a running vCPU thread: a command channel (pause,
//! resume, exit), a kick that gets the thread out of KVM_RUN, and join.
//!
//! A kick is a real-time signal sent to the thread. Its handler sets
//! `immediate_exit` in the thread's own `kvm_run`, so a kick that lands just
//! before the thread enters KVM_RUN still makes KVM_RUN return at once
//! (EINTR) instead of being lost until the guest's next exit.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::Arc;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, Killable};

use super::state::VcpuState;

/// Errors from driving a vCPU thread.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
    #[error("vCPU {id}: cannot kick it out of KVM_RUN: {source}")]
    Kick {
        id: u8,
        source: vmm_sys_util::errno::Error,
    },
    #[error("vCPU {0} has stopped")]
    Gone(u8),
    #[error("vCPU {id}: cannot take its state: {why}")]
    Save { id: u8, why: String },
    #[error("vCPU {id} did not answer {what} within {ms} ms")]
    Timeout {
        id: u8,
        what: &'static str,
        ms: u128,
    },
}

/// What the VMM asks of a vCPU thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuCmd {
    Pause,
    Resume,
    Exit,
    /// Take the vCPU's KVM state, with these MSRs (a snapshot; paused).
    SaveState(Arc<[u32]>),
}

/// What a vCPU thread answers.
#[derive(Debug)]
pub enum VcpuAck {
    Paused,
    Resumed,
    Saved(Box<Result<VcpuState, String>>),
}

/// The kick signal: the first real-time signal, which the C library leaves
/// alone.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run`, for the kick handler; null on other threads.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Record the calling vCPU thread's `kvm_run` for the kick handler.
pub fn set_thread_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|c| c.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set
        // before the thread first entered KVM_RUN and valid for the life of
        // the thread's VcpuFd; a byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Install the kick handler once for the process.
pub fn install_kick_handler() -> Result<(), Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(|e| Error::Handler(vmm_sys_util::errno::Error::new(e)))
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    cmd: Sender<VcpuCmd>,
    ack: Receiver<VcpuAck>,
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    pub fn new(
        id: u8,
        cmd: Sender<VcpuCmd>,
        ack: Receiver<VcpuAck>,
        thread: JoinHandle<()>,
    ) -> Self {
        VcpuHandle {
            id,
            cmd,
            ack,
            thread,
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Get the thread out of KVM_RUN so it reads its commands.
    pub fn kick(&self) -> Result<(), Error> {
        self.thread
            .kill(kick_signal())
            .map_err(|source| Error::Kick {
                id: self.id,
                source,
            })
    }

    fn send(&self, cmd: VcpuCmd) -> Result<(), Error> {
        self.cmd.send(cmd).map_err(|_| Error::Gone(self.id))?;
        self.kick()
    }

    /// Wait for the first answer `want` takes (others are dropped).
    fn wait<T>(
        &self,
        want: impl Fn(VcpuAck) -> Option<T>,
        what: &'static str,
        timeout: Duration,
    ) -> Result<T, Error> {
        loop {
            match self.ack.recv_timeout(timeout) {
                Ok(a) => {
                    if let Some(t) = want(a) {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        id: self.id,
                        what,
                        ms: timeout.as_millis(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Gone(self.id)),
            }
        }
    }

    /// Ask the thread to pause (without waiting for it).
    pub fn request_pause(&self) -> Result<(), Error> {
        self.send(VcpuCmd::Pause)
    }

    /// Wait until the thread says it has paused.
    pub fn wait_paused(&self, timeout: Duration) -> Result<(), Error> {
        self.wait(
            |a| matches!(a, VcpuAck::Paused).then_some(()),
            "pause",
            timeout,
        )
    }

    /// Ask the thread to resume (without waiting for it).
    pub fn request_resume(&self) -> Result<(), Error> {
        self.cmd
            .send(VcpuCmd::Resume)
            .map_err(|_| Error::Gone(self.id))
    }

    /// Wait until the thread says it runs again.
    pub fn wait_resumed(&self, timeout: Duration) -> Result<(), Error> {
        self.wait(
            |a| matches!(a, VcpuAck::Resumed).then_some(()),
            "resume",
            timeout,
        )
    }

    /// The paused vCPU's KVM state, with the MSRs of `msrs`.
    pub fn save_state(&self, msrs: Arc<[u32]>, timeout: Duration) -> Result<VcpuState, Error> {
        self.send(VcpuCmd::SaveState(msrs))?;
        let saved = self.wait(
            |a| match a {
                VcpuAck::Saved(r) => Some(*r),
                _ => None,
            },
            "take its state",
            timeout,
        )?;
        saved.map_err(|why| Error::Save { id: self.id, why })
    }

    /// Ask the thread to end and wait for it.
    pub fn exit_and_join(self) -> Result<(), Error> {
        let id = self.id;
        // A thread that already ended (the guest stopped) has no receiver.
        let _ = self.send(VcpuCmd::Exit);
        self.thread.join().map_err(|_| Error::Gone(id))
    }
}

/// The vCPU thread's side of the channel.
pub struct VcpuControl {
    pub cmd: Receiver<VcpuCmd>,
    pub ack: Sender<VcpuAck>,
}

/// What the vCPU thread does after reading its commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Run,
    Exit,
}

impl VcpuControl {
    /// Handle every pending command; while paused, block until resumed.
    /// `save` takes the vCPU's state for a [`VcpuCmd::SaveState`].
    pub fn poll(&self, save: &mut dyn FnMut(&[u32]) -> Result<VcpuState, String>) -> Next {
        let mut paused = false;
        loop {
            let cmd = if paused {
                match self.cmd.recv() {
                    Ok(c) => c,
                    Err(_) => return Next::Exit,
                }
            } else {
                match self.cmd.try_recv() {
                    Ok(c) => c,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return Next::Run,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return Next::Exit,
                }
            };
            match cmd {
                VcpuCmd::Pause => {
                    paused = true;
                    let _ = self.ack.send(VcpuAck::Paused);
                }
                VcpuCmd::Resume => {
                    if paused {
                        paused = false;
                        let _ = self.ack.send(VcpuAck::Resumed);
                    }
                }
                VcpuCmd::Exit => return Next::Exit,
                VcpuCmd::SaveState(msrs) => {
                    let _ = self.ack.send(VcpuAck::Saved(Box::new(save(&msrs))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn pause_blocks_until_resume() {
        let (cmd_tx, cmd_rx) = channel();
        let (ack_tx, ack_rx) = channel();
        let ctl = VcpuControl {
            cmd: cmd_rx,
            ack: ack_tx,
        };
        assert_eq!(ctl.poll(&mut no_save), Next::Run);
        cmd_tx.send(VcpuCmd::Pause).unwrap();
        let t = std::thread::spawn(move || ctl.poll(&mut no_save));
        assert!(matches!(ack_rx.recv().unwrap(), VcpuAck::Paused));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "a paused vCPU must wait for Resume");
        cmd_tx.send(VcpuCmd::Resume).unwrap();
        assert!(matches!(ack_rx.recv().unwrap(), VcpuAck::Resumed));
        assert_eq!(t.join().unwrap(), Next::Run);
    }

    #[test]
    fn exit_and_hang_up_end_the_thread() {
        let (cmd_tx, cmd_rx) = channel();
        let (ack_tx, _ack_rx) = channel();
        let ctl = VcpuControl {
            cmd: cmd_rx,
            ack: ack_tx,
        };
        cmd_tx.send(VcpuCmd::Exit).unwrap();
        assert_eq!(ctl.poll(&mut no_save), Next::Exit);
        drop(cmd_tx);
        assert_eq!(ctl.poll(&mut no_save), Next::Exit);
    }

    fn no_save(_: &[u32]) -> Result<VcpuState, String> {
        Err("no vCPU here".into())
    }

    #[test]
    fn a_paused_vcpu_answers_a_save_and_stays_paused() {
        let (cmd_tx, cmd_rx) = channel();
        let (ack_tx, ack_rx) = channel();
        let ctl = VcpuControl {
            cmd: cmd_rx,
            ack: ack_tx,
        };
        cmd_tx.send(VcpuCmd::Pause).unwrap();
        let t = std::thread::spawn(move || ctl.poll(&mut no_save));
        assert!(matches!(ack_rx.recv().unwrap(), VcpuAck::Paused));
        cmd_tx
            .send(VcpuCmd::SaveState(Arc::from(vec![0x10u32])))
            .unwrap();
        match ack_rx.recv().unwrap() {
            VcpuAck::Saved(r) => assert_eq!(r.unwrap_err(), "no vCPU here"),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "still paused after the save");
        cmd_tx.send(VcpuCmd::Resume).unwrap();
        assert_eq!(t.join().unwrap(), Next::Run);
    }
}
