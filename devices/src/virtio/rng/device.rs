//! [`Rng`]: the device model and its place in the event loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{Error, RngConfig, RngCounters, RngState, MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::rate_limiter::TokenBucket;
use crate::virtio::active::ActiveQueues;
use crate::virtio::{
    timer, ActivateError, DeviceState, Interrupt, StateError, VirtioCommon, VirtioDevice, TYPE_RNG,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

// Event loop tokens.
const QUEUE_TOKEN: u32 = 0;
const TIMER_TOKEN: u32 = 1;

/// What activation hands the device: its one queue, memory and interrupt.
pub(super) type Active = ActiveQueues<1>;

/// A virtio-rng device.
///
/// Put it in an `Arc<Mutex<Rng>>`, give that to
/// [`MmioTransport`](crate::virtio::mmio::MmioTransport) as the
/// `VirtioDevice` and to the event manager as a `MutEventSubscriber`;
/// register `queue_events()[0]` as the queue's ioeventfd and the transport's
/// interrupt as an irqfd. `init` registers the queue EventFd and the rate
/// limiter's timerfd.
pub struct Rng {
    common: VirtioCommon,
    /// Fires when the rate limiter has tokens again.
    pub(super) timer: TimerFd,
    pub(super) bucket: Option<TokenBucket>,
    /// The bucket's clock starts here.
    epoch: Instant,
    /// The queue waits for `timer`; kicks until then are ignored.
    pub(super) throttled: bool,
    pub(super) active: Option<Active>,
    /// Random bytes on their way into one request's buffers.
    pub(super) scratch: Vec<u8>,
    /// The writable buffers of the request at hand.
    pub(super) bufs: Vec<(vm_memory::GuestAddress, usize)>,
    pub(super) counters: RngCounters,
}

impl Rng {
    pub fn new(cfg: &RngConfig) -> Result<Self, Error> {
        let epoch = Instant::now();
        let avail_features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        Ok(Rng {
            common: VirtioCommon::new(
                TYPE_RNG,
                avail_features,
                vec![QUEUE_SIZE],
                vec![EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?],
            ),
            timer: timer::new_timer().map_err(Error::Timer)?,
            bucket: cfg
                .rate_limiter
                .and_then(|b| TokenBucket::new(b, Duration::ZERO)),
            epoch,
            throttled: false,
            active: None,
            scratch: vec![0; MAX_REQUEST_BYTES],
            bufs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            counters: RngCounters::default(),
        })
    }

    pub fn counters(&self) -> RngCounters {
        self.counters
    }

    /// Whether the driver has set DRIVER_OK (and not reset since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Whether requests wait for the rate limiter right now.
    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// The rate limiter's clock.
    pub(super) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The queue EventFd fired.
    fn handle_queue_event(&mut self) {
        // Kicks before activation or while throttled only need draining.
        let _ = self.common.queue_event(0).read();
        if !self.throttled {
            self.process_queue();
        }
    }

    /// The rate limiter's timer fired: take requests again.
    fn handle_timer_event(&mut self) {
        match timer::expired(&mut self.timer) {
            Ok(true) => {
                self.throttled = false;
                self.process_queue();
            }
            Ok(false) => {}
            Err(e) => log::error!("entropy device: cannot read the rate limiter's timer: {e}"),
        }
    }

    fn stop_throttling(&mut self) {
        self.throttled = false;
        if let Err(e) = timer::disarm(&mut self.timer) {
            log::warn!("entropy device: cannot disarm the rate limiter's timer: {e}");
        }
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("rate_limited", &self.bucket.is_some())
            .field("throttled", &self.throttled)
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl VirtioDevice for Rng {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "entropy device: ignored config write of {} bytes at {offset:#x}",
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
        self.stop_throttling();
        self.active = Some(active);
        // Let the event loop look at the queue once, in case the driver
        // posted buffers before DRIVER_OK.
        self.common
            .queue_event(0)
            .write(1)
            .map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.active = None;
        self.common.clear_acked();
        self.stop_throttling();
    }

    fn queue_states(&self) -> Vec<QueueState> {
        // A request put back for the rate limiter is already counted back
        // into the ring (`go_to_previous_position`).
        self.active
            .as_ref()
            .map_or_else(Vec::new, Active::queue_states)
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Rng(RngState {
            counters: self.counters,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Rng(s) => {
                self.counters = s.counters;
                Ok(())
            }
            other => Err(other.wrong_device("rng")),
        }
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            Events::with_data(self.common.queue_event(0), QUEUE_TOKEN, EventSet::IN),
            Events::with_data(&self.timer, TIMER_TOKEN, EventSet::IN),
        ];
        for events in fds {
            if let Err(e) = ops.add(events) {
                log::error!(
                    "entropy device: cannot register fd {} with the event loop: {e}",
                    events.fd()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            QUEUE_TOKEN => self.handle_queue_event(),
            TIMER_TOKEN => self.handle_timer_event(),
            other => log::error!("entropy device: unexpected event token {other}"),
        }
    }
}
