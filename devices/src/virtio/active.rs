//! What a virtio device holds between DRIVER_OK and reset, the same for
//! every device: guest memory, the interrupt, and its queues, checked and
//! set up the same way.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueState, QueueT};

use super::{check_queues, notify_used, ActivateError, Interrupt};

/// An activated device's memory, interrupt and `N` queues.
pub struct ActiveQueues<const N: usize> {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    pub queues: [Queue; N],
}

impl<const N: usize> ActiveQueues<N> {
    /// Take what `activate` got: exactly `N` queues, each valid in `mem`,
    /// with EVENT_IDX as negotiated.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        event_idx: bool,
    ) -> Result<Self, ActivateError> {
        let got = queues.len();
        let mut queues: [Queue; N] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { got, want: N })?;
        check_queues(queues.iter(), &mem)?;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        Ok(ActiveQueues {
            mem,
            interrupt,
            queues,
        })
    }

    /// The queues' state, for a snapshot.
    pub fn queue_states(&self) -> Vec<QueueState> {
        self.queues.iter().map(|q| q.state()).collect()
    }

    /// After adding used buffers to queue `index`: interrupt the driver if
    /// it wants to hear. Returns whether it was interrupted.
    pub fn notify(&mut self, index: usize, name: &str) -> bool {
        match self.queues.get_mut(index) {
            Some(q) => notify_used(q, &self.mem, &self.interrupt, name),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn queue(used: u64) -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        q
    }

    #[test]
    fn counts_validity_and_event_idx() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        let a = ActiveQueues::<2>::new(
            mem.clone(),
            irq.clone(),
            vec![queue(0x3000), queue(0x4000)],
            true,
        )
        .unwrap();
        assert!(a.queues.iter().all(|q| q.event_idx_enabled()));
        let e = ActiveQueues::<2>::new(mem.clone(), irq.clone(), vec![queue(0x3000)], false);
        assert!(matches!(
            e,
            Err(ActivateError::QueueCount { got: 1, want: 2 })
        ));
        let e = ActiveQueues::<1>::new(mem, irq, vec![queue(0x10_0000)], false);
        assert!(matches!(e, Err(ActivateError::InvalidQueue(0))));
    }
}
