//! [`Balloon`]: the device model, its configuration space, the VMM's
//! controls, and its place in the event loop.

use std::sync::Arc;
use std::time::Duration;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{
    BalloonConfig, BalloonCounters, BalloonState, BalloonStats, Error, DEFLATE_INDEX,
    INFLATE_INDEX, MAX_AMOUNT_MIB, PAGES_PER_MIB, QUEUE_SIZE, STATS_INDEX,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::active::ActiveQueues;
use crate::virtio::{
    check_queues, read_config_bytes, timer, ActivateError, DeviceState, Interrupt, StateError,
    VirtioCommon, VirtioDevice, INT_CONFIG, TYPE_BALLOON, VIRTIO_F_VERSION_1,
};

/// Config space: le32 num_pages, le32 actual. The later fields belong to
/// features this device does not offer; reads there are zeros.
const CONFIG_LEN: usize = 8;
const ACTUAL_OFFSET: usize = 4;

/// Event loop token of the statistics timer; queue `i` has token `i`.
const TIMER_TOKEN: u32 = 3;

/// What exists between DRIVER_OK and reset.
pub(super) struct Active {
    /// The inflate and deflate queues, memory and interrupt.
    pub(super) q: ActiveQueues<2>,
    /// The statistics queue, when the driver accepted VIRTIO_BALLOON_F_STATS_VQ.
    pub(super) stats: Option<Queue>,
}

/// A virtio-balloon device.
///
/// Put it in an `Arc<Mutex<Balloon>>`, give that to
/// [`MmioTransport`](crate::virtio::mmio::MmioTransport) as the
/// `VirtioDevice` and to the event manager as a `MutEventSubscriber`;
/// register `queue_events()[i]` as the ioeventfd of queue `i` (two queues,
/// three with statistics) and the transport's interrupt as an irqfd. `init`
/// registers the queue EventFds and, with statistics on, the polling timer.
pub struct Balloon {
    pub(super) cfg: BalloonConfig,
    /// `actual` as the driver last wrote it (little-endian).
    actual: [u8; 4],
    common: VirtioCommon,
    pub(super) stats_timer: TimerFd,
    pub(super) active: Option<Active>,
    /// The statistics buffer the device holds until the next poll.
    pub(super) stats_head: Option<u16>,
    pub(super) stats: BalloonStats,
    pub(super) counters: BalloonCounters,
}

impl Balloon {
    pub fn new(cfg: &BalloonConfig) -> Result<Self, Error> {
        if cfg.amount_mib > MAX_AMOUNT_MIB {
            return Err(Error::TooLarge(cfg.amount_mib));
        }
        let stats_on = cfg.stats_polling_interval_s > 0;
        let mut avail_features = 1u64 << VIRTIO_F_VERSION_1;
        if stats_on {
            avail_features |= 1 << VIRTIO_BALLOON_F_STATS_VQ;
        }
        if cfg.deflate_on_oom {
            avail_features |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        let n = if stats_on { 3 } else { 2 };
        let queue_evts = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(Balloon {
            cfg: *cfg,
            actual: [0; 4],
            common: VirtioCommon::new(
                TYPE_BALLOON,
                avail_features,
                vec![QUEUE_SIZE; n],
                queue_evts,
            ),
            stats_timer: timer::new_timer().map_err(Error::Timer)?,
            active: None,
            stats_head: None,
            stats: BalloonStats::default(),
            counters: BalloonCounters::default(),
        })
    }

    /// The configuration as it stands (the target follows `update_target`).
    pub fn config(&self) -> BalloonConfig {
        self.cfg
    }

    /// The target in 4 KiB pages (config `num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.cfg.amount_mib * PAGES_PER_MIB
    }

    /// The balloon's size in 4 KiB pages as the driver last reported it.
    pub fn actual_pages(&self) -> u32 {
        u32::from_le_bytes(self.actual)
    }

    /// The balloon's size in MiB as the driver last reported it.
    pub fn actual_mib(&self) -> u32 {
        self.actual_pages() / PAGES_PER_MIB
    }

    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Whether the driver has set DRIVER_OK (and not reset since).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The balloon's size and the guest's latest statistics.
    pub fn latest_stats(&self) -> Result<BalloonStats, Error> {
        if self.cfg.stats_polling_interval_s == 0 {
            return Err(Error::StatsDisabled);
        }
        Ok(BalloonStats {
            target_pages: self.target_pages(),
            target_mib: self.cfg.amount_mib,
            actual_pages: self.actual_pages(),
            actual_mib: self.actual_mib(),
            ..self.stats
        })
    }

    /// Set a new target (Firecracker's `PATCH /balloon`). A running driver
    /// is told with a configuration-change interrupt; before DRIVER_OK the
    /// driver reads the new value when it starts.
    pub fn update_target(&mut self, amount_mib: u32) -> Result<(), Error> {
        if amount_mib > MAX_AMOUNT_MIB {
            return Err(Error::TooLarge(amount_mib));
        }
        self.cfg.amount_mib = amount_mib;
        if let Some(act) = &self.active {
            act.q
                .interrupt
                .trigger(INT_CONFIG)
                .map_err(Error::Interrupt)?;
        }
        Ok(())
    }

    /// Change the statistics polling interval (Firecracker's
    /// `PATCH /balloon/statistics`). Statistics cannot be turned on or off
    /// this way. A running device hands the driver its buffer back at once
    /// and polls at the new interval from then on.
    pub fn update_stats_interval(&mut self, secs: u16) -> Result<(), Error> {
        let from = self.cfg.stats_polling_interval_s;
        if secs == from {
            return Ok(());
        }
        if from == 0 || secs == 0 {
            return Err(Error::StatsToggle { from, to: secs });
        }
        self.cfg.stats_polling_interval_s = secs;
        if self.active.as_ref().is_some_and(|a| a.stats.is_some()) {
            self.return_stats_buffer();
            timer::arm_periodic(&mut self.stats_timer, Duration::from_secs(secs.into()))
                .map_err(Error::Timer)?;
        }
        Ok(())
    }

    fn config_image(&self) -> [u8; CONFIG_LEN] {
        let mut image = [0u8; CONFIG_LEN];
        image[..ACTUAL_OFFSET].copy_from_slice(&self.target_pages().to_le_bytes());
        image[ACTUAL_OFFSET..].copy_from_slice(&self.actual);
        image
    }

    fn handle_timer_event(&mut self) {
        match timer::expired(&mut self.stats_timer) {
            Ok(true) => self.return_stats_buffer(),
            Ok(false) => {}
            Err(e) => log::error!("balloon: cannot read the statistics timer: {e}"),
        }
    }
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("cfg", &self.cfg)
            .field("actual_pages", &self.actual_pages())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl VirtioDevice for Balloon {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_image(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; num_pages is the host's.
        let mut ignored = 0;
        for (i, &b) in data.iter().enumerate() {
            match (offset as usize).checked_add(i) {
                Some(at) if (ACTUAL_OFFSET..CONFIG_LEN).contains(&at) => {
                    if let Some(a) = self.actual.get_mut(at - ACTUAL_OFFSET) {
                        *a = b;
                    }
                }
                _ => ignored += 1,
            }
        }
        if ignored > 0 {
            crate::rate_limited!(
                warn,
                "balloon: ignored {ignored} bytes of a config write at offset {offset:#x}"
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let stats_on = self.common.has_feature(VIRTIO_BALLOON_F_STATS_VQ);
        let want = if stats_on { 3 } else { 2 };
        if queues.len() < want {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want,
            });
        }
        queues.truncate(want);
        let stats = if stats_on { queues.pop() } else { None };
        if let Some(q) = &stats {
            check_queues([q], &mem).map_err(|_| ActivateError::InvalidQueue(STATS_INDEX))?;
        }
        // EVENT_IDX is not offered, so the queues go without it.
        let q = self.common.activate_queues(mem, interrupt, queues)?;
        if stats_on {
            let period = Duration::from_secs(self.cfg.stats_polling_interval_s.into());
            timer::arm_periodic(&mut self.stats_timer, period).map_err(|e| {
                ActivateError::Backend(format!("balloon: cannot arm the statistics timer: {e}"))
            })?;
        }
        self.active = Some(Active { q, stats });
        self.stats_head = None;
        // Let the event loop look at every queue once: the driver posts its
        // first statistics buffer (and maybe more) before DRIVER_OK.
        for evt in self.common.queue_events().iter().take(want) {
            evt.write(1).map_err(ActivateError::Signal)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.stats_head = None;
        self.common.clear_acked();
        // The next driver starts with an empty balloon.
        self.actual = [0; 4];
        if let Err(e) = timer::disarm(&mut self.stats_timer) {
            log::warn!("balloon: cannot disarm the statistics timer: {e}");
        }
    }

    fn queue_states(&self) -> Vec<QueueState> {
        let Some(act) = &self.active else {
            return Vec::new();
        };
        let mut states = act.q.queue_states();
        if let Some(q) = &act.stats {
            let mut s = q.state();
            // The statistics buffer the device holds goes back to the ring:
            // the restored device takes it again at activation.
            if self.stats_head.is_some() {
                s.next_avail = s.next_avail.wrapping_sub(1);
            }
            states.push(s);
        }
        states
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Balloon(Box::new(BalloonState {
            amount_mib: self.cfg.amount_mib,
            deflate_on_oom: self.cfg.deflate_on_oom,
            stats_polling_interval_s: self.cfg.stats_polling_interval_s,
            actual_pages: self.actual_pages(),
            stats: self.stats,
            counters: self.counters,
        }))
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Balloon(s) = state else {
            return Err(state.wrong_device("balloon"));
        };
        let here = self.cfg;
        if s.deflate_on_oom != here.deflate_on_oom {
            return Err(StateError::Mismatch {
                what: "deflate-on-OOM setting",
                saved: s.deflate_on_oom.to_string(),
                here: here.deflate_on_oom.to_string(),
            });
        }
        if (s.stats_polling_interval_s == 0) != (here.stats_polling_interval_s == 0) {
            return Err(StateError::Mismatch {
                what: "statistics polling interval (seconds)",
                saved: s.stats_polling_interval_s.to_string(),
                here: here.stats_polling_interval_s.to_string(),
            });
        }
        if s.amount_mib > MAX_AMOUNT_MIB {
            return Err(StateError::Device(
                Error::TooLarge(s.amount_mib).to_string(),
            ));
        }
        self.cfg.amount_mib = s.amount_mib;
        self.cfg.stats_polling_interval_s = s.stats_polling_interval_s;
        self.actual = s.actual_pages.to_le_bytes();
        self.stats = s.stats;
        self.counters = s.counters;
        Ok(())
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds: Vec<Events> = self
            .common
            .queue_events()
            .iter()
            .zip(0u32..)
            .map(|(evt, token)| Events::with_data(evt, token, EventSet::IN))
            .collect();
        if self.cfg.stats_polling_interval_s > 0 {
            fds.push(Events::with_data(
                &self.stats_timer,
                TIMER_TOKEN,
                EventSet::IN,
            ));
        }
        for events in fds {
            if let Err(e) = ops.add(events) {
                log::error!(
                    "balloon: cannot register fd {} with the event loop: {e}",
                    events.fd()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if let Some(evt) = self.common.queue_events().get(token as usize) {
            // Kicks before activation only need draining.
            let _ = evt.read();
        }
        match token as usize {
            INFLATE_INDEX => self.process_inflate(),
            DEFLATE_INDEX => self.process_deflate(),
            STATS_INDEX => self.process_stats(),
            _ if token == TIMER_TOKEN => self.handle_timer_event(),
            _ => log::error!("balloon: unexpected event token {token}"),
        }
    }
}
