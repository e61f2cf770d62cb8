//! Saving and restoring a network device.

use super::*;
use crate::virtio::testing::through_json;
use crate::virtio::{DeviceState, StateError};

#[test]
fn mac_and_counters_come_back() {
    let (a, _host, _) = fake_net(&config(None));
    let DeviceState::Net(mut saved) = a.save_state() else {
        panic!("not a net state");
    };
    saved.counters.rx_frames = 3;
    let state = through_json(&DeviceState::Net(saved));
    assert!(matches!(&state, DeviceState::Net(s) if s.mac == [0x06, 1, 2, 3, 4, 5]));

    // A device built without a MAC shows the saved one after restore.
    let mut cfg = config(None);
    cfg.guest_mac = None;
    let (mut b, _host, _) = fake_net(&cfg);
    assert_ne!(b.guest_mac(), [0x06, 1, 2, 3, 4, 5]);
    b.restore_state(&state).unwrap();
    assert_eq!(b.guest_mac(), [0x06, 1, 2, 3, 4, 5]);
    let mut mac = [0u8; 6];
    b.read_config(0, &mut mac);
    assert_eq!(mac, [0x06, 1, 2, 3, 4, 5]);
    assert_eq!(b.save_state(), state);
    assert_eq!(b.counters().rx_frames, 3);
}

#[test]
fn another_mtu_or_kind_is_refused() {
    let (a, _host, _) = fake_net(&config(Some(1400)));
    let state = a.save_state();
    let (mut b, _host, _) = fake_net(&config(None));
    let before = b.save_state();
    assert!(matches!(
        b.restore_state(&state),
        Err(StateError::Mismatch { what: "MTU", .. })
    ));
    assert!(matches!(
        b.restore_state(&DeviceState::None),
        Err(StateError::WrongDevice { here: "net", .. })
    ));
    assert_eq!(b.save_state(), before);
}

/// RX chains reserved for a frame that does not fit yet go back to the
/// ring in the saved state; the frame is dropped.
#[test]
fn reserved_rx_chains_go_back_to_the_ring() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    let features = b.all_features();
    b.activate(features);
    b.add_rx_buffers(2, 1024);
    b.kick(RX_INDEX);
    b.inject(&frame(3000, 1));
    b.run();
    assert!(b.drv.used(RX_INDEX).is_empty());
    let net = b.lp.lock();
    let states = net.queue_states();
    assert_eq!(states.len(), 2);
    assert_eq!(states[RX_INDEX].next_avail, 0);
    assert_eq!(states[RX_INDEX].next_used, 0);
}
