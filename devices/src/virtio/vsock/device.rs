//! [`Vsock`]: features, config space, activation, the queue loops, and the
//! event loop subscriber that runs them.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::{Muxer, FIRST_STREAM_TOKEN};
use super::packet::{self, Segments};
use super::{
    Error, VsockConfig, VsockCounters, VsockState, EVENT_INDEX, EVENT_TRANSPORT_RESET, HDR_LEN,
    MAX_PKT_LEN, QUEUE_SIZE, RX_INDEX, TX_INDEX,
};
use crate::virtio::active::ActiveQueues;
use crate::virtio::{
    read_config_bytes, ActivateError, DeviceState, Interrupt, StateError, VirtioCommon,
    VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

// Event loop tokens; host streams use FIRST_STREAM_TOKEN and up.
const TOKEN_RX_QUEUE: u32 = 0;
const TOKEN_TX_QUEUE: u32 = 1;
const TOKEN_EVENT_QUEUE: u32 = 2;
const TOKEN_ACTIVATE: u32 = 3;
const TOKEN_LISTENER: u32 = 4;
const _: () = assert!(TOKEN_LISTENER < FIRST_STREAM_TOKEN);

/// What exists between DRIVER_OK and reset: the rx, tx and event queues.
type Active = ActiveQueues<3>;

/// A virtio-vsock device whose host side is a unix socket.
///
/// Wiring (done by the VMM): put it behind the MMIO transport, register
/// `queue_events()[i]` as the ioeventfd of queue `i` (rx, tx, event) and the
/// transport's interrupt as an irqfd, and add the device (as
/// `Arc<Mutex<Vsock>>`) to the event manager. `init` registers the queue
/// EventFds, an activation EventFd and the listening socket; host streams
/// are added and removed as connections come and go.
pub struct Vsock {
    muxer: Muxer,
    common: VirtioCommon,
    /// Written by `activate` and `reset` (vCPU thread) so the event loop
    /// runs the queues or lets go of the streams.
    activate_evt: EventFd,
    /// `struct virtio_vsock_config`: guest_cid, le64.
    config: [u8; 8],
    active: Option<Active>,
    /// An RX chain taken from the ring when there was nothing to put in it
    /// after all; it is used first next time.
    held_rx: Option<Segments>,
    /// Payload of the TX packet being handled.
    tx_payload: Vec<u8>,
    /// Payload of the RX packet being built.
    rx_payload: Vec<u8>,
    /// The device was restored from a snapshot: the guest must hear of the
    /// transport reset once the event queue has a buffer.
    reset_event_pending: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid())
            .field("uds_path", &self.uds_path())
            .field("active", &self.active.is_some())
            .field("connections", &self.muxer.connection_count())
            .field("counters", &self.muxer.counters)
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Validate `cfg` and listen on `cfg.uds_path`, which must not exist.
    pub fn new(cfg: &VsockConfig) -> Result<Vsock, Error> {
        cfg.validate()?;
        let evt = || {
            EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd {
                path: cfg.uds_path.clone(),
                source,
            })
        };
        let queue_evts = vec![evt()?, evt()?, evt()?];
        let activate_evt = evt()?;
        let avail_features = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX);
        Ok(Vsock {
            muxer: Muxer::new(cfg)?,
            common: VirtioCommon::new(TYPE_VSOCK, avail_features, vec![QUEUE_SIZE; 3], queue_evts),
            activate_evt,
            config: cfg.guest_cid.to_le_bytes(),
            active: None,
            held_rx: None,
            tx_payload: Vec::with_capacity(MAX_PKT_LEN as usize),
            rx_payload: vec![0; MAX_PKT_LEN as usize],
            reset_event_pending: false,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        u64::from_le_bytes(self.config)
    }

    /// The socket host processes connect to.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Counters since creation (they survive device resets).
    pub fn counters(&self) -> VsockCounters {
        self.muxer.counters
    }

    /// Open connections (in either direction, connecting or established).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    #[cfg(test)]
    pub(super) fn set_max_connections(&mut self, max: usize) {
        self.muxer.max_connections = max;
    }

    /// Whether the driver has set DRIVER_OK (and not reset since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Take every packet the guest sent, then deliver what it caused.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let queue = &mut a.queues[TX_INDEX];
        loop {
            if let Err(e) = queue.disable_notification(&a.mem) {
                crate::rate_limited!(error, "vsock: cannot disable TX notifications: {e}");
                break;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(&a.mem) {
                popped = true;
                let head = chain.head_index();
                let parsed = Segments::collect(chain, &a.mem, false)
                    .map_err(|(_, e)| (None, e))
                    .and_then(|segs| packet::read_tx(&segs, &a.mem, &mut self.tx_payload));
                let counters = &mut self.muxer.counters;
                match parsed {
                    Ok(hdr) => {
                        counters.tx_packets += 1;
                        self.muxer.handle_guest_packet(&hdr, &self.tx_payload);
                    }
                    Err((_, why)) => {
                        counters.tx_malformed += 1;
                        crate::rate_limited!(warn, "vsock: dropped a malformed TX chain: {why}");
                    }
                }
                // TX buffers are only read.
                if let Err(e) = queue.add_used(&a.mem, head, 0) {
                    crate::rate_limited!(error, "vsock: cannot return a TX chain: {e}");
                }
                used = true;
            }
            match queue.enable_notification(&a.mem) {
                // More arrived while notifications were off. An empty
                // round means a corrupt avail index: stop, do not spin.
                Ok(true) if popped => continue,
                Ok(_) => break,
                Err(e) => {
                    crate::rate_limited!(error, "vsock: cannot enable TX notifications: {e}");
                    break;
                }
            }
        }
        if used {
            a.notify(TX_INDEX, "vsock TX queue");
        }
        self.process_rx();
    }

    /// Fill guest RX buffers while there is something for the guest.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        // Set when the ring looked empty and notifications were re-armed; a
        // second empty look means really empty.
        let mut rearmed = false;
        while self.muxer.rx_pending() {
            let segs = match self.held_rx.take() {
                Some(segs) => segs,
                None => match a.queues[RX_INDEX].pop_descriptor_chain(&a.mem) {
                    Some(chain) => {
                        rearmed = false;
                        match Segments::collect(chain, &a.mem, true).and_then(packet::check_rx) {
                            Ok(segs) => segs,
                            Err((head, why)) => {
                                self.muxer.counters.rx_malformed += 1;
                                crate::rate_limited!(
                                    warn,
                                    "vsock: returning a malformed RX chain: {why}"
                                );
                                if let Err(e) = a.queues[RX_INDEX].add_used(&a.mem, head, 0) {
                                    crate::rate_limited!(
                                        error,
                                        "vsock: cannot return an RX chain: {e}"
                                    );
                                    break;
                                }
                                used = true;
                                continue;
                            }
                        }
                    }
                    None if rearmed => break,
                    None => match a.queues[RX_INDEX].enable_notification(&a.mem) {
                        Ok(true) => {
                            rearmed = true;
                            continue;
                        }
                        Ok(false) => break,
                        Err(e) => {
                            crate::rate_limited!(
                                error,
                                "vsock: cannot enable RX notifications: {e}"
                            );
                            break;
                        }
                    },
                },
            };
            // check_rx leaves room for at least one payload byte.
            let room = segs
                .capacity
                .saturating_sub(HDR_LEN)
                .min(MAX_PKT_LEN as usize);
            let buf = self.rx_payload.get_mut(..room).unwrap_or_default();
            let Some(hdr) = self.muxer.next_rx(buf) else {
                self.held_rx = Some(segs);
                break;
            };
            // next_rx writes at most `room` bytes and says how many in hdr.len;
            // should that not hold, stop rather than hand the guest garbage.
            let Some(payload) = self.rx_payload.get(..hdr.len as usize) else {
                crate::rate_limited!(
                    error,
                    "vsock: an RX packet of {} bytes overruns its {room}-byte buffer",
                    hdr.len
                );
                if let Err(e) = a.interrupt.signal_needs_reset() {
                    crate::rate_limited!(error, "vsock: cannot signal the guest: {e}");
                }
                break;
            };
            let len = packet::write_rx(&segs, &a.mem, &hdr, payload);
            if let Err(e) = a.queues[RX_INDEX].add_used(&a.mem, segs.head, len) {
                crate::rate_limited!(error, "vsock: cannot return an RX chain: {e}");
                break;
            }
            used = true;
            let counters = &mut self.muxer.counters;
            counters.rx_packets += 1;
            counters.rx_bytes += u64::from(hdr.len);
        }
        if used {
            a.notify(RX_INDEX, "vsock RX queue");
        }
    }

    /// Tell the guest its connections are gone (after a restore): put a
    /// TRANSPORT_RESET event in the first event queue buffer. Without a
    /// buffer the event waits for the driver to post one.
    fn send_reset_event(&mut self) {
        let Some(a) = self.active.as_mut().filter(|_| self.reset_event_pending) else {
            return;
        };
        let queue = &mut a.queues[EVENT_INDEX];
        let Some(chain) = queue.pop_descriptor_chain(&a.mem) else {
            log::warn!("vsock: no event buffer for the transport reset yet");
            return;
        };
        let head = chain.head_index();
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let len = match chain.clone().next() {
            Some(d) if d.is_write_only() && d.len() as usize >= event.len() => {
                match a.mem.write_slice(&event, d.addr()) {
                    Ok(()) => event.len() as u32,
                    Err(e) => {
                        crate::rate_limited!(error, "vsock: cannot write an event: {e}");
                        0
                    }
                }
            }
            _ => {
                self.muxer.counters.protocol_errors += 1;
                crate::rate_limited!(warn, "vsock: an event buffer too small or not writable");
                0
            }
        };
        if let Err(e) = queue.add_used(&a.mem, head, len) {
            crate::rate_limited!(error, "vsock: cannot return an event buffer: {e}");
        }
        if len > 0 {
            self.reset_event_pending = false;
        }
        a.notify(EVENT_INDEX, "vsock event queue");
    }

    fn drain(evt: &EventFd, what: &str) {
        if let Err(e) = evt.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::error!("vsock: reading the {what} EventFd: {e}");
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // guest_cid is read-only.
        log::debug!(
            "vsock: ignoring a {}-byte config write at offset {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let active: Active = self.common.activate_queues(mem, interrupt, queues)?;
        self.active = Some(active);
        self.held_rx = None;
        self.muxer.set_active();
        self.send_reset_event();
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
        self.held_rx = None;
        self.common.clear_acked();
        self.muxer.reset();
        if let Err(e) = self.activate_evt.write(1) {
            // The streams are shut down already; they close at the next event.
            log::warn!("vsock: cannot signal the reset: {e}");
        }
    }

    fn queue_states(&self) -> Vec<QueueState> {
        let Some(a) = &self.active else {
            return Vec::new();
        };
        let mut states = a.queue_states();
        // The RX chain held for the next packet is the last one taken; it
        // goes back to the ring.
        if let Some(rx) = states.get_mut(RX_INDEX).filter(|_| self.held_rx.is_some()) {
            rx.next_avail = rx.next_avail.wrapping_sub(1);
        }
        states
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Vsock(VsockState {
            guest_cid: self.guest_cid(),
            counters: self.muxer.counters,
        })
    }

    /// The restored device starts without connections and, once activated,
    /// sends the guest a TRANSPORT_RESET event so it drops its own.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Vsock(s) = state else {
            return Err(state.wrong_device("vsock"));
        };
        if s.guest_cid != self.guest_cid() {
            return Err(StateError::Mismatch {
                what: "guest CID",
                saved: s.guest_cid.to_string(),
                here: self.guest_cid().to_string(),
            });
        }
        self.muxer.counters = s.counters;
        self.reset_event_pending = true;
        Ok(())
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.common.queue_event(RX_INDEX), TOKEN_RX_QUEUE),
            (self.common.queue_event(TX_INDEX), TOKEN_TX_QUEUE),
            (self.common.queue_event(EVENT_INDEX), TOKEN_EVENT_QUEUE),
            (&self.activate_evt, TOKEN_ACTIVATE),
        ];
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("vsock: cannot register EventFd {token} with the event loop: {e}");
            }
        }
        let listener = Events::with_data(&self.muxer.listener.sock, TOKEN_LISTENER, EventSet::IN);
        if let Err(e) = ops.add(listener) {
            log::error!(
                "vsock {}: cannot watch the listening socket: {e}",
                self.uds_path().display()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_RX_QUEUE => {
                Self::drain(self.common.queue_event(RX_INDEX), "RX queue");
                self.process_rx();
            }
            TOKEN_TX_QUEUE => {
                Self::drain(self.common.queue_event(TX_INDEX), "TX queue");
                self.process_tx();
            }
            // The event queue only holds buffers for TRANSPORT_RESET, sent
            // once after a restore.
            TOKEN_EVENT_QUEUE => {
                Self::drain(self.common.queue_event(EVENT_INDEX), "event queue");
                self.send_reset_event();
            }
            TOKEN_ACTIVATE => {
                Self::drain(&self.activate_evt, "activation");
                // The driver may have queued packets before DRIVER_OK.
                self.process_tx();
            }
            TOKEN_LISTENER => self.muxer.accept(ops),
            token => {
                self.muxer.host_event(token, events.event_set());
                self.process_rx();
            }
        }
        self.muxer.sync(ops);
    }
}
