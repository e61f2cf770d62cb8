//! The virtio-net device: features, config space, activation, and the event
//! loop subscriber that runs its queues.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rx::RxPath;
use super::tap::{NetBackend, Tap};
use super::tx::TxPath;
use super::{
    generate_mac, tap_offload_flags, validate_mac, Error, NetConfig, NetCounters, NetState,
    MIN_MTU, QUEUE_SIZE, RX_INDEX, TX_INDEX, VNET_HDR_LEN, VNET_HDR_LEN_LEGACY,
};
use crate::virtio::active::ActiveQueues;
use crate::virtio::{
    read_config_bytes, ActivateError, DeviceState, Interrupt, StateError, VirtioCommon,
    VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// `struct virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// Event loop tokens (the `data` of each registered fd).
const TOKEN_RX_QUEUE: u32 = 0;
const TOKEN_TX_QUEUE: u32 = 1;
const TOKEN_ACTIVATE: u32 = 2;
const TOKEN_BACKEND: u32 = 3;

/// What exists only between DRIVER_OK and reset: queues RX_INDEX and
/// TX_INDEX.
type Active = ActiveQueues<2>;

/// A virtio-net device.
///
/// Wiring (done by the VMM): put it behind the MMIO transport, register
/// `queue_events()[i]` as the ioeventfd of queue `i` and the transport's
/// interrupt as an irqfd, and add the device (as `Arc<Mutex<Net>>`) to the
/// event manager. `init` registers the queue EventFds and an activation
/// EventFd; the backend fd is polled only while the device is active and the
/// guest has room for frames.
pub struct Net {
    iface_id: String,
    mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    common: VirtioCommon,
    /// Written by `activate` and `reset` (vCPU thread) so the event loop
    /// re-evaluates what it polls.
    activate_evt: EventFd,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    rx: RxPath,
    tx: TxPath,
    /// Whether the backend fd is in the event loop's interest list.
    backend_polled: bool,
    counters: NetCounters,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("iface_id", &self.iface_id)
            .field("mac", &super::format_mac(&self.mac))
            .field(
                "acked_features",
                &format_args!("{:#x}", self.common.acked_features()),
            )
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A device backed by TAP `cfg.tap_name` (created if missing).
    pub fn new(cfg: NetConfig) -> Result<Net, Error> {
        let tap = Tap::open(&cfg.tap_name)?;
        Net::with_backend(&cfg, Box::new(tap))
    }

    /// A device with any backend (`cfg.tap_name` is not used). The backend
    /// fd must be non-blocking.
    pub fn with_backend(cfg: &NetConfig, backend: Box<dyn NetBackend>) -> Result<Net, Error> {
        let mac = match cfg.guest_mac {
            Some(mac) => {
                validate_mac(mac)?;
                mac
            }
            None => generate_mac(&cfg.iface_id),
        };
        let bit = |b: u32| 1u64 << b;
        let mut avail_features = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_UFO)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_UFO);

        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        // The link is always up from the guest's view: a TAP's carrier
        // follows its file descriptor, which we hold.
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = cfg.mtu {
            if mtu < MIN_MTU {
                return Err(Error::InvalidMtu(mtu));
            }
            avail_features |= bit(VIRTIO_NET_F_MTU);
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
        }

        let evt = || {
            EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd {
                iface_id: cfg.iface_id.clone(),
                source,
            })
        };
        Ok(Net {
            iface_id: cfg.iface_id.clone(),
            mac,
            backend,
            common: VirtioCommon::new(
                TYPE_NET,
                avail_features,
                vec![QUEUE_SIZE; 2],
                vec![evt()?, evt()?],
            ),
            activate_evt: evt()?,
            config,
            active: None,
            rx: RxPath::new(),
            tx: TxPath::new(),
            backend_polled: false,
            counters: NetCounters::default(),
        })
    }

    /// The interface's name in the VM config.
    pub fn iface_id(&self) -> &str {
        &self.iface_id
    }

    /// The MAC the guest sees.
    pub fn guest_mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frame counters since creation (they survive device resets).
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether the driver has set DRIVER_OK (and not reset since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Move frames from the backend into RX buffers (the event loop runs
    /// this; public for the fuzz targets, which drive it without one).
    #[doc(hidden)]
    pub fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.rx.process(
            self.backend.as_mut(),
            &a.mem,
            &mut a.queues[RX_INDEX],
            &mut self.counters,
        ) {
            a.notify(RX_INDEX, "net RX queue");
        }
    }

    /// Send the TX chains the driver made available (see `process_rx`).
    #[doc(hidden)]
    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.tx.process(
            self.backend.as_mut(),
            &a.mem,
            &mut a.queues[TX_INDEX],
            &mut self.counters,
        ) {
            a.notify(TX_INDEX, "net TX queue");
        }
    }

    /// Poll the backend exactly while frames read from it can go somewhere.
    fn sync_backend_interest(&mut self, ops: &mut EventOps) {
        let want = self.active.is_some() && self.rx.wants_frames();
        if want == self.backend_polled {
            return;
        }
        let events = Events::with_data_raw(self.backend.as_raw_fd(), TOKEN_BACKEND, EventSet::IN);
        let res = if want {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match res {
            Ok(()) => self.backend_polled = want,
            Err(e) => log::error!(
                "net {}: cannot {} the backend fd in the event loop: {e}",
                self.iface_id,
                if want { "add" } else { "remove" }
            ),
        }
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn ack_features(&mut self, features: u64) {
        let unknown = self.common.ack(features);
        if unknown != 0 {
            log::warn!(
                "net {}: the driver accepted features {unknown:#x} that were not offered; \
                 ignoring them",
                self.iface_id
            );
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every virtio-net config field is read-only for a modern driver
        // (the writable MAC was a legacy-only feature).
        log::debug!(
            "net {}: ignoring a {}-byte config write at offset {offset}",
            self.iface_id,
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

        let mrg_rxbuf = self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF);
        let hdr_len = if self.common.has_feature(VIRTIO_F_VERSION_1) || mrg_rxbuf {
            VNET_HDR_LEN
        } else {
            VNET_HDR_LEN_LEGACY
        };
        let backend_err = |what: &str, e: std::io::Error| {
            ActivateError::Backend(format!("net {}: {what}: {e}", self.iface_id))
        };
        self.backend
            .set_vnet_hdr_len(hdr_len)
            .map_err(|e| backend_err("setting the vnet header length", e))?;
        let offloads = tap_offload_flags(self.common.acked_features());
        self.backend
            .set_offload(offloads)
            .map_err(|e| backend_err("setting the TAP offloads", e))?;

        self.rx.reset();
        self.rx.hdr_len = hdr_len;
        self.rx.mrg_rxbuf = mrg_rxbuf;
        self.tx.hdr_len = hdr_len;
        self.active = Some(active);
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx.reset();
        self.common.clear_acked();
        // Until the next driver negotiates, the TAP must not hand us frames
        // that need offloads it may not accept.
        if let Err(e) = self.backend.set_offload(0) {
            log::warn!("net {}: cannot clear the TAP offloads: {e}", self.iface_id);
        }
        if let Err(e) = self.activate_evt.write(1) {
            // The loop still stops polling the backend at its next event.
            log::warn!("net {}: cannot signal the reset: {e}", self.iface_id);
        }
    }

    fn queue_states(&self) -> Vec<QueueState> {
        let Some(a) = &self.active else {
            return Vec::new();
        };
        let mut states = a.queue_states();
        // RX chains reserved for a frame go back to the ring; the frame is
        // dropped with the snapshot. Should a malformed chain have been
        // answered after them, rewinding would answer it twice: the guest
        // loses those buffers instead.
        if let Some(rx) = states.get_mut(RX_INDEX) {
            match self.rx.held_chains() {
                Some(n) => rx.next_avail = rx.next_avail.wrapping_sub(n),
                None => log::warn!(
                    "net {}: RX buffers held for a frame are lost to the snapshot",
                    self.iface_id
                ),
            }
        }
        states
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(NetState {
            iface_id: self.iface_id.clone(),
            mac: self.mac,
            mtu: self.mtu(),
            counters: self.counters,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Net(s) = state else {
            return Err(state.wrong_device("net"));
        };
        if s.mtu != self.mtu() {
            return Err(StateError::Mismatch {
                what: "MTU",
                saved: format!("{:?}", s.mtu),
                here: format!("{:?}", self.mtu()),
            });
        }
        validate_mac(s.mac).map_err(|e| StateError::Device(e.to_string()))?;
        self.mac = s.mac;
        if let Some(m) = self.config.get_mut(0..6) {
            m.copy_from_slice(&s.mac);
        }
        self.counters = s.counters;
        Ok(())
    }
}

impl Net {
    /// The MTU advertised to the guest, if any.
    fn mtu(&self) -> Option<u16> {
        let offered = self.common.avail_features() & (1 << VIRTIO_NET_F_MTU) != 0;
        let bytes = <[u8; 2]>::try_from(self.config.get(10..12)?).ok()?;
        offered.then(|| u16::from_le_bytes(bytes))
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.common.queue_event(RX_INDEX), TOKEN_RX_QUEUE),
            (self.common.queue_event(TX_INDEX), TOKEN_TX_QUEUE),
            (&self.activate_evt, TOKEN_ACTIVATE),
        ];
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!(
                    "net {}: cannot register EventFd {token} with the event loop: {e}",
                    self.iface_id
                );
            }
        }
        self.sync_backend_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_RX_QUEUE => {
                // Kicks before activation only need draining.
                let _ = self.common.queue_event(RX_INDEX).read();
                // New RX buffers: a pending frame may fit now.
                self.process_rx();
            }
            TOKEN_TX_QUEUE => {
                let _ = self.common.queue_event(TX_INDEX).read();
                self.process_tx();
            }
            TOKEN_ACTIVATE => {
                let _ = self.activate_evt.read();
                // The driver may have queued work before DRIVER_OK.
                self.process_tx();
                self.process_rx();
            }
            TOKEN_BACKEND => {
                if events
                    .event_set()
                    .intersects(EventSet::ERROR | EventSet::HANG_UP)
                {
                    self.rx.backend_failed(&mut self.counters);
                } else {
                    self.process_rx();
                }
            }
            other => log::warn!("net {}: unexpected event token {other}", self.iface_id),
        }
        self.sync_backend_interest(ops);
    }
}
