//! [`VirtioCommon`]: what every virtio device holds the same way, its
//! identity, its queues' sizes and kick EventFds, and the features offered
//! and accepted.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::active::ActiveQueues;
use super::{ActivateError, Interrupt, VIRTIO_RING_F_EVENT_IDX};

/// The part of a device model the transport sees before activation.
///
/// A device keeps one and hands it out through
/// [`VirtioDevice::common`](super::VirtioDevice::common); the trait's
/// provided methods answer the transport from it.
#[derive(Debug)]
pub struct VirtioCommon {
    device_type: u32,
    queue_max_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    avail_features: u64,
    acked_features: u64,
}

impl VirtioCommon {
    /// A device of type `device_type` offering `avail_features`, with one
    /// queue per entry of `queue_max_sizes` and `queue_evts` (the same
    /// length; the transport refuses a device where they differ).
    pub fn new(
        device_type: u32,
        avail_features: u64,
        queue_max_sizes: Vec<u16>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        VirtioCommon {
            device_type,
            queue_max_sizes,
            queue_evts,
            avail_features,
            acked_features: 0,
        }
    }

    /// virtio device ID.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Maximum size of each queue.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    /// One EventFd per queue, written when the driver notifies that queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The kick EventFd of queue `index`.
    // Devices pass their own queue-index constants, and `queue_evts` holds
    // one EventFd per queue the device declared: the index is in range.
    #[allow(clippy::indexing_slicing)]
    pub fn queue_event(&self, index: usize) -> &EventFd {
        &self.queue_evts[index]
    }

    /// Features the device offers.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features the driver accepted (none before it sets FEATURES_OK).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Record the driver's `features`, keeping only those offered. Returns
    /// the bits it dropped, for a device that wants to log them.
    pub fn ack(&mut self, features: u64) -> u64 {
        self.acked_features = features & self.avail_features;
        features & !self.avail_features
    }

    /// Forget the accepted features: the driver reset the device.
    pub fn clear_acked(&mut self) {
        self.acked_features = 0;
    }

    /// Whether the driver accepted feature `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// Whether the driver accepted VIRTIO_RING_F_EVENT_IDX.
    pub fn event_idx(&self) -> bool {
        self.has_feature(VIRTIO_RING_F_EVENT_IDX)
    }

    /// Take what `activate` got as `N` checked queues, with EVENT_IDX as
    /// negotiated.
    pub fn activate_queues<const N: usize>(
        &self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<ActiveQueues<N>, ActivateError> {
        ActiveQueues::new(mem, interrupt, queues, self.event_idx())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{TYPE_RNG, VIRTIO_F_VERSION_1};

    fn common(avail: u64) -> VirtioCommon {
        VirtioCommon::new(TYPE_RNG, avail, vec![8], vec![EventFd::new(0).unwrap()])
    }

    #[test]
    fn ack_masks_unoffered_bits() {
        let avail = 1u64 << VIRTIO_F_VERSION_1;
        let mut c = common(avail);
        assert_eq!(c.device_type(), TYPE_RNG);
        assert_eq!(c.queue_max_sizes(), &[8]);
        assert_eq!(c.queue_events().len(), 1);
        assert_eq!(c.acked_features(), 0);
        assert_eq!(c.ack(avail | 0b101), 0b101);
        assert_eq!(c.acked_features(), avail);
        assert!(c.has_feature(VIRTIO_F_VERSION_1));
        assert!(!c.has_feature(0));
        c.clear_acked();
        assert_eq!(c.acked_features(), 0);
        assert_eq!(c.avail_features(), avail);
    }

    #[test]
    fn event_idx_follows_the_acked_bit() {
        let idx = 1u64 << VIRTIO_RING_F_EVENT_IDX;
        let mut offered = common(idx);
        assert!(!offered.event_idx());
        offered.ack(idx);
        assert!(offered.event_idx());
        offered.ack(0);
        assert!(!offered.event_idx());
        // A bit the device did not offer stays off, whatever the driver says.
        let mut not_offered = common(1u64 << VIRTIO_F_VERSION_1);
        not_offered.ack(idx);
        assert!(!not_offered.event_idx());
    }
}
