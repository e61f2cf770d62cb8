//! Saving and restoring the vsock device: the restored device tells the
//! guest, with TRANSPORT_RESET, that its connections are gone.

use super::*;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::testing::{bring_up, through_json};
use crate::virtio::{DeviceState, StateError, INT_VRING};

fn device(dir: &TempDir, name: &str, cid: u64) -> Loop<Vsock> {
    Loop::new(
        Vsock::new(&VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join(name),
        })
        .unwrap(),
    )
}

/// Post an 8-byte event buffer filled with 0xff; returns (head, address).
fn post_event_buffer(drv: &mut Driver) -> (u16, u64) {
    let addr = drv.alloc(8);
    drv.write(addr, &[0xff; 8]);
    (drv.add_chain(EVENT_INDEX, &[(addr, 8, true)]), addr)
}

#[test]
fn restore_sends_a_transport_reset_event() {
    let mem = guest_mem(MEM_SIZE);
    let dir = TempDir::new();
    let mut drv = Driver::new(&mem, 3, QUEUE_SIZE);
    let mut lp = device(&dir, "a.sock", GUEST_CID);
    let mut t = MmioTransport::new(mem.clone(), lp.dev.clone()).unwrap();
    bring_up(&mut t, &drv.queues(3));
    let (head, addr) = post_event_buffer(&mut drv);
    lp.run();
    // A running device never uses its event buffers.
    assert!(drv.used(EVENT_INDEX).is_empty());

    let state = through_json(&t.state());
    assert!(matches!(&state.device, DeviceState::Vsock(s) if s.guest_cid == GUEST_CID));
    assert_eq!(state.queues[EVENT_INDEX].next_avail, 0);

    // The new process listens on its own socket, for the same CID.
    let mut lp2 = device(&dir, "b.sock", GUEST_CID);
    let mut t2 = MmioTransport::new(mem.clone(), lp2.dev.clone()).unwrap();
    t2.restore(&state).unwrap();
    assert_eq!(drv.used(EVENT_INDEX), vec![(u32::from(head), 4)]);
    assert_eq!(
        drv.read(addr, 8),
        [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        "TRANSPORT_RESET is event id 0"
    );
    assert_ne!(t2.interrupt().status() & INT_VRING, 0);
    // Only once.
    post_event_buffer(&mut drv);
    lp2.lock().queue_events()[EVENT_INDEX].write(1).unwrap();
    lp2.run();
    assert_eq!(drv.used(EVENT_INDEX).len(), 1);
    assert_eq!(lp2.lock().connection_count(), 0);
}

#[test]
fn the_reset_event_waits_for_a_buffer() {
    let mem = guest_mem(MEM_SIZE);
    let dir = TempDir::new();
    let mut drv = Driver::new(&mem, 3, QUEUE_SIZE);
    let lp = device(&dir, "a.sock", GUEST_CID);
    let mut t = MmioTransport::new(mem.clone(), lp.dev.clone()).unwrap();
    bring_up(&mut t, &drv.queues(3));
    let state = t.state();

    let mut lp2 = device(&dir, "b.sock", GUEST_CID);
    let mut t2 = MmioTransport::new(mem.clone(), lp2.dev.clone()).unwrap();
    t2.restore(&state).unwrap();
    lp2.run();
    assert!(drv.used(EVENT_INDEX).is_empty());
    let (head, _) = post_event_buffer(&mut drv);
    lp2.lock().queue_events()[EVENT_INDEX].write(1).unwrap();
    lp2.run();
    assert_eq!(drv.used(EVENT_INDEX), vec![(u32::from(head), 4)]);
}

#[test]
fn vsock_state_round_trips_and_refuses_another_cid() {
    let dir = TempDir::new();
    let lp = device(&dir, "a.sock", GUEST_CID);
    let state = through_json(&lp.lock().save_state());
    let lp2 = device(&dir, "b.sock", GUEST_CID);
    lp2.lock().restore_state(&state).unwrap();
    assert_eq!(lp2.lock().save_state(), state);

    let lp3 = device(&dir, "c.sock", GUEST_CID + 1);
    let before = lp3.lock().save_state();
    assert!(matches!(
        lp3.lock().restore_state(&state),
        Err(StateError::Mismatch {
            what: "guest CID",
            ..
        })
    ));
    assert_eq!(lp3.lock().save_state(), before);
}
