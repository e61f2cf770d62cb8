//! Saving and restoring a virtio-mmio transport and the device behind it.
//!
//! The VMM, with every vCPU paused:
//! 1. calls [`MmioTransport::prepare_save`] (the block device finishes its
//!    host I/O there) and then [`MmioTransport::state`];
//! 2. to resume, builds the device again from the saved configuration (a
//!    new TAP for net, the same image for block), wraps it in a new
//!    transport over the restored guest memory and calls
//!    [`MmioTransport::restore`] before any vCPU runs;
//! 3. registers the queue EventFds as ioeventfds and the interrupt as an
//!    irqfd, exactly as for a new device, and adds the device to the event
//!    loop. An interrupt that was pending is raised again on the EventFd;
//!    KVM delivers it once the irqfd is registered.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::bus::lock;
use crate::virtio::{DeviceState, QueueSnapshot, StateError};

/// A virtio-mmio transport's registers, its queues and its device's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmioState {
    /// virtio device ID; restore refuses a device of another type.
    pub device_type: u32,
    /// Device status as the driver left it (without DEVICE_NEEDS_RESET,
    /// which is `needs_reset`).
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    /// The features the driver wrote (and, with FEATURES_OK, the device
    /// accepted).
    pub driver_features: u64,
    pub queue_sel: u32,
    /// Every queue of the device, with the device's positions in it.
    pub queues: Vec<QueueSnapshot>,
    /// InterruptStatus bits the driver had not acknowledged.
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// The device had asked the driver for a reset.
    pub needs_reset: bool,
    /// What the device model holds beyond the transport.
    pub device: DeviceState,
}

impl MmioTransport {
    /// With the vCPUs paused: let the device finish work it started (host
    /// I/O in flight) so that [`MmioTransport::state`] sees a used ring
    /// with nothing half done. Call right before `state`, with the event
    /// loop not running this device in between.
    pub fn prepare_save(&mut self) -> Result<(), StateError> {
        lock(&self.device).prepare_save()
    }

    /// The transport's and the device's state. Take it with the vCPUs
    /// paused, after [`MmioTransport::prepare_save`].
    pub fn state(&self) -> MmioState {
        let (live, device) = {
            let d = lock(&self.device);
            (d.queue_states(), d.save_state())
        };
        // The device works on copies of the queues from DRIVER_OK on; its
        // positions are the live ones.
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| match live.get(i) {
                Some(l) => QueueSnapshot::from(l),
                None => QueueSnapshot::from(&q.state()),
            })
            .collect();
        MmioState {
            device_type: self.device_type,
            status: self.status & !STATUS_DEVICE_NEEDS_RESET,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            needs_reset: self.interrupt.needs_reset()
                || self.status & STATUS_DEVICE_NEEDS_RESET != 0,
            device,
        }
    }

    /// Bring a new transport (one the driver has not touched), built for
    /// the same kind of device (same type, same
    /// queue count) to `state`. If the driver had set DRIVER_OK, the device
    /// is activated again just as by the driver, with the saved queues, so
    /// it carries on from their `next_avail` and `next_used`.
    ///
    /// A state that does not fit this device (another type, queue count,
    /// a queue larger than the device allows, features it does not offer,
    /// the device's own state refused) is an error and changes nothing.
    /// Only a failed activation leaves the restored state behind, with the
    /// device marked as needing a reset, as a failed DRIVER_OK would.
    pub fn restore(&mut self, state: &MmioState) -> Result<(), StateError> {
        if self.status != 0 {
            return Err(StateError::InUse);
        }
        if state.device_type != self.device_type {
            return Err(StateError::DeviceType {
                saved: state.device_type,
                here: self.device_type,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(StateError::QueueCount {
                saved: state.queues.len(),
                here: self.queues.len(),
            });
        }
        if state.driver_features & !self.avail_features != 0 {
            return Err(StateError::Features {
                saved: state.driver_features,
                offered: self.avail_features,
            });
        }
        let driver_ok = state.status & STATUS_DRIVER_OK != 0;
        let queues = self
            .queues
            .iter()
            .zip(&state.queues)
            .enumerate()
            .map(|(index, (q, saved))| {
                let max = q.max_size();
                if !saved.size.is_power_of_two() || saved.size > max {
                    return Err(StateError::QueueSize {
                        index,
                        size: saved.size,
                        max,
                    });
                }
                let restored = Queue::try_from(saved.to_queue_state(max, false))
                    .map_err(|_| StateError::QueueAddress { index })?;
                if driver_ok && restored.ready() && !restored.is_valid(&self.mem) {
                    return Err(StateError::QueueAddress { index });
                }
                Ok(restored)
            })
            .collect::<Result<Vec<_>, _>>()?;

        {
            let mut device = lock(&self.device);
            device.restore_state(&state.device)?;
            if state.status & STATUS_FEATURES_OK != 0 {
                // The same call as at the driver's FEATURES_OK.
                device.ack_features(state.driver_features);
            }
        }
        self.queues = queues;
        self.queue_sel = state.queue_sel;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.status = state.status & !STATUS_DEVICE_NEEDS_RESET;
        self.config_generation = state.config_generation;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset)
            .map_err(|e| StateError::Device(format!("cannot raise the interrupt: {e}")))?;
        // A device that was waiting for the driver's reset stays stopped
        // until it comes.
        if driver_ok && !state.needs_reset {
            if let Err(e) = self.activate() {
                self.set_needs_reset();
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::GuestMemoryMmap;

    use super::*;
    use crate::virtio::rng::{Rng, RngConfig, QUEUE_SIZE};
    use crate::virtio::testing::{bring_up, guest_mem, through_json, Driver, Loop};
    use crate::virtio::{VirtioDevice, INT_VRING};

    const MEM_SIZE: usize = 0x20_0000;

    /// An entropy device on an event loop behind a transport.
    fn rng(mem: &GuestMemoryMmap) -> (MmioTransport, Loop<Rng>) {
        let lp = Loop::new(Rng::new(&RngConfig::default()).unwrap());
        let t = MmioTransport::new(mem.clone(), lp.dev.clone()).unwrap();
        (t, lp)
    }

    /// Post a request for `len` random bytes; returns its head.
    fn ask(drv: &mut Driver, len: u32) -> u16 {
        let buf = drv.alloc(len);
        drv.add_chain(0, &[(buf, len, true)])
    }

    fn kick(lp: &mut Loop<Rng>) {
        lp.lock().queue_events()[0].write(1).unwrap();
        lp.run();
    }

    #[test]
    fn a_running_device_moves_to_a_new_transport_and_carries_on() {
        let mem = guest_mem(MEM_SIZE);
        let mut drv = Driver::new(&mem, 1, QUEUE_SIZE);
        let (mut t, mut lp) = rng(&mem);
        bring_up(&mut t, &drv.queues(1));
        let first: Vec<u16> = (0..3).map(|_| ask(&mut drv, 16)).collect();
        kick(&mut lp);
        assert_eq!(drv.used(0).len(), 3);
        // One more request waits in the available ring when the VM stops.
        let waiting = ask(&mut drv, 32);

        t.prepare_save().unwrap();
        let state = through_json(&t.state());
        assert_eq!(state.device_type, crate::virtio::TYPE_RNG);
        assert_eq!(state.status, t.status());
        assert_eq!(state.queues.len(), 1);
        assert_eq!(
            (state.queues[0].next_avail, state.queues[0].next_used),
            (3, 3)
        );
        assert_eq!(state.interrupt_status, INT_VRING);
        assert!(matches!(&state.device, DeviceState::Rng(s) if s.counters.requests == 3));

        let (mut t2, mut lp2) = rng(&mem);
        t2.restore(&state).unwrap();
        assert_eq!(t2.state(), state);
        assert!(lp2.lock().is_activated());
        assert_eq!(t2.interrupt().eventfd().read().unwrap(), 1);
        // Activation kicked the queue: the waiting request is served first,
        // in the next used entry.
        lp2.run();
        let used = drv.used(0);
        assert_eq!(used.len(), 4);
        assert_eq!(used[3], (u32::from(waiting), 32));
        let later = ask(&mut drv, 8);
        kick(&mut lp2);
        let used = drv.used(0);
        assert_eq!(used.len(), 5);
        assert_eq!(used[4], (u32::from(later), 8));
        assert_eq!(
            used[..3].iter().map(|u| u.0 as u16).collect::<Vec<_>>(),
            first
        );
        assert_eq!(lp2.lock().counters().requests, 5);
    }

    #[test]
    fn a_device_before_driver_ok_stays_stopped() {
        let mem = guest_mem(MEM_SIZE);
        let (t, _lp) = rng(&mem);
        let state = through_json(&t.state());
        let (mut t2, lp2) = rng(&mem);
        t2.restore(&state).unwrap();
        assert_eq!(t2.state(), state);
        assert!(!lp2.lock().is_activated());
        assert_eq!(t2.status(), 0);
    }

    #[test]
    fn a_device_waiting_for_a_reset_is_not_activated() {
        let mem = guest_mem(MEM_SIZE);
        let drv = Driver::new(&mem, 1, QUEUE_SIZE);
        let (mut t, _lp) = rng(&mem);
        bring_up(&mut t, &drv.queues(1));
        t.interrupt().signal_needs_reset().unwrap();
        let state = t.state();
        assert!(state.needs_reset);
        let (mut t2, lp2) = rng(&mem);
        t2.restore(&state).unwrap();
        assert!(!lp2.lock().is_activated());
        assert!(t2.interrupt().needs_reset());
        assert_eq!(t2.state(), state);
    }

    #[test]
    fn states_that_do_not_fit_are_refused_and_change_nothing() {
        let mem = guest_mem(MEM_SIZE);
        let drv = Driver::new(&mem, 1, QUEUE_SIZE);
        let (mut t, _lp) = rng(&mem);
        bring_up(&mut t, &drv.queues(1));
        let good = t.state();

        let mut bad = Vec::new();
        let mut s = good.clone();
        s.device_type = crate::virtio::TYPE_BLOCK;
        bad.push((s, "device type"));
        let mut s = good.clone();
        s.queues.push(s.queues[0]);
        bad.push((s, "queue count"));
        let mut s = good.clone();
        s.queues[0].size = QUEUE_SIZE * 2;
        bad.push((s, "queue size"));
        let mut s = good.clone();
        s.queues[0].size = 3;
        bad.push((s, "queue size"));
        let mut s = good.clone();
        s.queues[0].used_ring = MEM_SIZE as u64;
        bad.push((s, "queue outside memory"));
        let mut s = good.clone();
        s.queues[0].desc_table += 1;
        bad.push((s, "misaligned queue"));
        let mut s = good.clone();
        s.driver_features |= 1 << 40;
        bad.push((s, "features"));
        let mut s = good.clone();
        s.device = DeviceState::None;
        bad.push((s, "device state"));

        for (s, what) in bad {
            let (mut t2, lp2) = rng(&mem);
            let before = t2.state();
            let e = t2.restore(&s).expect_err(what);
            assert!(!e.to_string().is_empty());
            assert_eq!(t2.state(), before, "{what}: {e}");
            assert!(!lp2.lock().is_activated(), "{what}");
            assert_eq!(lp2.lock().common().acked_features(), 0, "{what}");
            // And the good state still fits afterwards.
            t2.restore(&good).unwrap();
        }

        // A transport a driver already uses is not a restore target.
        let (mut t2, _lp2) = rng(&mem);
        bring_up(&mut t2, &drv.queues(1));
        assert!(matches!(t2.restore(&good), Err(StateError::InUse)));
    }

    #[test]
    fn the_device_kind_is_checked() {
        use crate::virtio::balloon::{Balloon, BalloonConfig};
        let mem = guest_mem(MEM_SIZE);
        let (t, _lp) = rng(&mem);
        let state = t.state();
        let balloon = Arc::new(Mutex::new(Balloon::new(&BalloonConfig::default()).unwrap()));
        let mut t2 = MmioTransport::new(mem, balloon).unwrap();
        assert!(matches!(
            t2.restore(&state),
            Err(StateError::DeviceType { saved: 4, here: 5 })
        ));
    }
}
