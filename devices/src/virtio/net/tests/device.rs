//! Device behaviour against a fake backend.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::*;
use crate::virtio::net::*;
use crate::virtio::{
    ActivateError, Interrupt, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

#[test]
fn tx_frame_reaches_the_backend_intact() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.run();
    // Header and frame in separate descriptors, the frame itself split too.
    let f = frame(1000, 1);
    let head = b.add_tx_frame(&f, &[VNET_HDR_LEN, 300]);
    b.kick(TX_INDEX);
    b.run();

    assert_eq!(b.host_frames(), vec![f]);
    assert_eq!(b.drv.used(TX_INDEX), vec![(u32::from(head), 0)]);
    assert_eq!(b.interrupts(), 1);
    let c = b.counters();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_malformed), (1, 1000, 0));
}

#[test]
fn rx_frame_lands_in_guest_buffers_with_num_buffers() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    let bufs = b.add_rx_buffers(2, 2048);
    b.run();
    let f = frame(100, 2);
    b.inject(&f);
    b.run();

    assert_eq!(
        b.drv.used(RX_INDEX),
        vec![(u32::from(bufs[0].0), f.len() as u32)]
    );
    let got = b.drv.read(bufs[0].1, f.len());
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(b.interrupts(), 1);
    let c = b.counters();
    assert_eq!((c.rx_frames, c.rx_bytes, c.rx_dropped), (1, 100, 0));
}

#[test]
fn rx_large_frame_spans_mergeable_buffers() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    let bufs = b.add_rx_buffers(8, 1024);
    b.run();
    let f = frame(3000 - VNET_HDR_LEN, 3);
    b.inject(&f);
    b.run();

    let used = b.drv.used(RX_INDEX);
    let heads: Vec<u32> = bufs[..3].iter().map(|&(h, _)| u32::from(h)).collect();
    assert_eq!(
        used,
        vec![(heads[0], 1024), (heads[1], 1024), (heads[2], 952)]
    );
    let mut got = Vec::new();
    for (&(_, addr), &(_, len)) in bufs.iter().zip(&used) {
        got.extend(b.drv.read(addr, len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
}

#[test]
fn rx_waits_for_buffers_without_losing_or_busy_polling() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.run();
    let (f1, f2, f3) = (frame(600, 1), frame(700, 2), frame(800, 3));
    for f in [&f1, &f2, &f3] {
        b.inject(f);
    }
    // No buffers: one frame is read and held, the backend is no longer polled.
    b.run();
    assert!(b.drv.used(RX_INDEX).is_empty());
    b.inject(&frame(50, 4));
    assert_eq!(
        b.run(),
        0,
        "the backend fd is still polled while RX is starved"
    );

    // One buffer: the held frame goes in, the next one is held.
    let first = b.add_rx_buffers(1, 2048);
    b.kick(RX_INDEX);
    b.run();
    assert_eq!(b.drv.used(RX_INDEX).len(), 1);
    assert_eq!(b.drv.read(first[0].1, f1.len())[12..], f1[12..]);

    let more = b.add_rx_buffers(3, 2048);
    b.kick(RX_INDEX);
    b.run();
    let used = b.drv.used(RX_INDEX);
    assert_eq!(used.len(), 4);
    assert_eq!(b.drv.read(more[0].1, f2.len())[12..], f2[12..]);
    assert_eq!(b.drv.read(more[1].1, f3.len())[12..], f3[12..]);
    let c = b.counters();
    assert_eq!((c.rx_frames, c.rx_dropped), (4, 0));
}

#[test]
fn rx_without_mergeable_buffers_drops_frames_too_big_for_one_buffer() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features() & !bit(VIRTIO_NET_F_MRG_RXBUF));
    let bufs = b.add_rx_buffers(2, 1536);
    b.run();
    b.inject(&frame(2000, 1));
    let small = frame(200, 2);
    b.inject(&small);
    b.run();

    assert_eq!(b.counters().rx_dropped, 1);
    // The small frame took the first buffer, with num_buffers = 1.
    assert_eq!(
        b.drv.used(RX_INDEX),
        vec![(u32::from(bufs[0].0), small.len() as u32)]
    );
    let got = b.drv.read(bufs[0].1, small.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(got[12..], small[12..]);
}

#[test]
fn rx_frame_bigger_than_every_buffer_together_is_dropped() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    // All 256 descriptors hold 16 bytes each: 4 KiB in total.
    b.add_rx_buffers(usize::from(QUEUE_SIZE), 16);
    b.run();
    b.inject(&frame(8000, 1));
    b.inject(&frame(20, 2));
    b.run();

    let c = b.counters();
    assert_eq!((c.rx_dropped, c.rx_frames), (1, 1));
    // The buffers held for the dropped frame served the next one.
    assert_eq!(
        b.drv.used(RX_INDEX).iter().map(|u| u.1).collect::<Vec<_>>(),
        [16, 16]
    );
}

#[test]
fn rx_malformed_chains_are_returned_and_counted() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    let ro = b.drv.alloc(2048);
    let bad_ro = b.drv.add_chain(RX_INDEX, &[(ro, 2048, false)]);
    let bad_addr = b.drv.add_chain(RX_INDEX, &[(OUTSIDE, 2048, true)]);
    let good = b.add_rx_buffers(1, 2048);
    b.run();
    let f = frame(100, 1);
    b.inject(&f);
    b.run();

    assert_eq!(
        b.drv.used(RX_INDEX),
        vec![
            (u32::from(bad_ro), 0),
            (u32::from(bad_addr), 0),
            (u32::from(good[0].0), f.len() as u32)
        ]
    );
    let c = b.counters();
    assert_eq!((c.rx_malformed, c.rx_frames), (2, 1));
}

#[test]
fn a_chain_refused_halfway_leaves_nothing_of_itself_behind() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    // A frame spanning two chains, with a refused chain between them whose
    // first buffer was fine: the frame must land in the good chains only.
    let first = b.add_rx_buffers(1, 1024);
    let (ok, ro) = (b.drv.alloc(1024), b.drv.alloc(1024));
    let bad = b
        .drv
        .add_chain(RX_INDEX, &[(ok, 1024, true), (ro, 1024, false)]);
    let second = b.add_rx_buffers(1, 1024);
    b.drv.write(ok, &[0xee; 1024]);
    b.run();
    let f = frame(1500, 9);
    b.inject(&f);
    b.run();

    assert_eq!(
        b.drv.used(RX_INDEX),
        vec![
            (u32::from(bad), 0),
            (u32::from(first[0].0), 1024),
            (u32::from(second[0].0), f.len() as u32 - 1024)
        ]
    );
    let mut got = b.drv.read(first[0].1, 1024);
    got.extend(b.drv.read(second[0].1, f.len() - 1024));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2);
    assert!(got[12..] == f[12..], "the frame arrived intact");
    assert_eq!(b.drv.read(ok, 1024), vec![0xee; 1024]);
    assert_eq!(b.counters().rx_malformed, 1);
}

#[test]
fn tx_malformed_chains_are_dropped_and_counted() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.run();
    let w = b.drv.alloc(100);
    let big = b.drv.alloc(40_000);
    let heads = [
        b.drv.add_chain(TX_INDEX, &[(w, 100, true)]),
        b.drv.add_chain(TX_INDEX, &[(w, 12, false), (w, 88, true)]),
        b.drv.add_chain(TX_INDEX, &[(OUTSIDE, 100, false)]),
        b.drv
            .add_chain(TX_INDEX, &[(w, VNET_HDR_LEN as u32, false)]),
        b.drv
            .add_chain(TX_INDEX, &[(big, 40_000, false), (big, 40_000, false)]),
    ];
    let f = frame(60, 9);
    let good = b.add_tx_frame(&f, &[]);
    b.kick(TX_INDEX);
    b.run();

    assert_eq!(b.host_frames(), vec![f]);
    let mut want: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
    want.push((u32::from(good), 0));
    assert_eq!(b.drv.used(TX_INDEX), want);
    let c = b.counters();
    assert_eq!((c.tx_malformed, c.tx_frames), (5, 1));
}

#[test]
fn tx_frames_the_backend_refuses_are_counted() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.calls.lock().unwrap().fail_writes = true;
    let head = b.add_tx_frame(&frame(60, 1), &[]);
    b.kick(TX_INDEX);
    b.run();
    assert_eq!(b.drv.used(TX_INDEX), vec![(u32::from(head), 0)]);
    let c = b.counters();
    assert_eq!((c.tx_dropped, c.tx_frames), (1, 0));
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asks() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.run();
    // The driver wants an interrupt once used_idx passes 2.
    b.drv.set_used_event(TX_INDEX, 2);
    for i in 0..2 {
        b.add_tx_frame(&frame(60, i), &[]);
        b.kick(TX_INDEX);
        b.run();
        assert_eq!(b.interrupts(), 0, "frame {i}");
    }
    b.add_tx_frame(&frame(60, 3), &[]);
    b.kick(TX_INDEX);
    b.run();
    assert_eq!(b.interrupts(), 1);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features() & !bit(VIRTIO_RING_F_EVENT_IDX));
    b.run();
    b.drv.set_used_event(TX_INDEX, 100);
    for i in 0..2 {
        b.add_tx_frame(&frame(60, i), &[]);
        b.kick(TX_INDEX);
        b.run();
        assert_eq!(b.interrupts(), 1, "frame {i}");
    }
}

#[test]
fn before_activation_kicks_are_drained_and_the_backend_is_not_polled() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.add_tx_frame(&frame(60, 1), &[]);
    b.kick(TX_INDEX);
    b.kick(RX_INDEX);
    let f = frame(80, 2);
    b.inject(&f);
    assert_eq!(b.run(), 2, "two kicks, no backend event");
    assert_eq!(b.run(), 0, "kicks were not drained");
    assert!(b.host_frames().is_empty());

    // DRIVER_OK: queued TX goes out, the waiting RX frame comes in.
    let bufs = b.add_rx_buffers(1, 2048);
    b.activate(b.all_features());
    b.run();
    assert_eq!(b.host_frames().len(), 1);
    assert_eq!(
        b.drv.used(RX_INDEX),
        vec![(u32::from(bufs[0].0), f.len() as u32)]
    );
}

#[test]
fn reset_stops_polling_the_backend() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.run();
    b.lp.lock().reset();
    b.run();
    assert!(!b.lp.lock().is_activated());
    b.inject(&frame(80, 1));
    assert_eq!(b.run(), 0, "backend polled after reset");
    assert_eq!(b.calls.lock().unwrap().offloads.last(), Some(&0));
}

#[test]
fn a_failing_backend_is_not_polled_in_a_loop() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    b.activate(b.all_features());
    b.add_rx_buffers(1, 2048);
    b.run();
    b.calls.lock().unwrap().fail_reads = true;
    b.inject(&frame(80, 1));
    b.run();
    assert_eq!(b.counters().rx_backend_errors, 1);
    assert_eq!(b.run(), 0);
}

#[test]
fn features_and_offloads_follow_what_the_driver_accepts() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, &config(None));
    let avail = b.all_features();
    for f in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
    ] {
        assert_ne!(avail & bit(f), 0, "feature {f} not offered");
    }
    assert_eq!(
        avail & bit(VIRTIO_NET_F_MTU),
        0,
        "MTU offered without an MTU"
    );

    let base = bit(VIRTIO_F_VERSION_1);
    b.activate(base | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4));
    assert_eq!(
        b.calls.lock().unwrap().offloads.last(),
        Some(&(libc::TUN_F_CSUM | libc::TUN_F_TSO4))
    );
    b.activate(base | bit(VIRTIO_NET_F_HOST_TSO4));
    assert_eq!(b.calls.lock().unwrap().offloads.last(), Some(&0));
    b.activate(avail);
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
    assert_eq!(b.calls.lock().unwrap().offloads.last(), Some(&all));
    assert_eq!(b.calls.lock().unwrap().hdr_lens.last(), Some(&VNET_HDR_LEN));
    // A legacy driver without VERSION_1 or MRG_RXBUF uses the 10-byte header.
    b.activate(bit(VIRTIO_NET_F_MAC));
    assert_eq!(
        b.calls.lock().unwrap().hdr_lens.last(),
        Some(&VNET_HDR_LEN_LEGACY)
    );
    // Offloads need checksum offload underneath.
    assert_eq!(tap_offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
}

#[test]
fn config_space_has_mac_status_and_mtu() {
    let (mut net, _host, _calls) = fake_net(&config(Some(1400)));
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert_eq!(net.queue_events().len(), 2);
    assert_ne!(net.avail_features() & bit(VIRTIO_NET_F_MTU), 0);
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg[0..6], [0x06, 1, 2, 3, 4, 5]);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    // Byte-wise reads, reads past the end, and ignored writes.
    let mut one = [0u8; 1];
    net.read_config(5, &mut one);
    assert_eq!(one, [5]);
    net.write_config(0, &[0xff; 6]);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, net.guest_mac());
    let mut past = [0xffu8; 4];
    net.read_config(12, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn bad_configs_are_refused_with_reasons() {
    let (a, _) = UnixDatagram::pair().unwrap();
    let calls = Arc::new(Mutex::new(Calls::default()));
    let mk = |cfg: NetConfig| {
        let backend = FakeBackend {
            sock: a.try_clone().unwrap(),
            calls: calls.clone(),
        };
        Net::with_backend(&cfg, Box::new(backend)).map(|_| ())
    };
    let mut cfg = config(Some(67));
    assert!(matches!(mk(cfg.clone()), Err(Error::InvalidMtu(67))));
    cfg.mtu = None;
    cfg.guest_mac = Some([0x01, 0, 0x5e, 0, 0, 1]);
    let err = mk(cfg.clone()).unwrap_err().to_string();
    assert!(
        err.contains("01:00:5e:00:00:01") && err.contains("multicast"),
        "{err}"
    );
    cfg.guest_mac = None;
    mk(cfg).unwrap();
}

#[test]
fn activation_checks_the_queues() {
    let mem = guest_mem(MEM_SIZE);
    let (mut net, _host, _calls) = fake_net(&config(None));
    let irq = Arc::new(Interrupt::new().unwrap());
    let drv = Driver::new(&mem, 1, QUEUE_SIZE);
    let one = drv.queues(1);
    match net.activate(mem.clone(), irq.clone(), one) {
        Err(ActivateError::QueueCount { got: 1, want: 2 }) => {}
        other => panic!("expected QueueCount, got {other:?}"),
    }
    let mut bad = Queue::new(QUEUE_SIZE).unwrap();
    bad.try_set_desc_table_address(GuestAddress(OUTSIDE))
        .unwrap();
    let two = vec![drv.queues(1).remove(0), bad];
    match net.activate(mem.clone(), irq, two) {
        Err(ActivateError::InvalidQueue(1)) => {}
        other => panic!("expected InvalidQueue(1), got {other:?}"),
    }
    assert!(!net.is_activated());
}

#[test]
fn mac_parsing() {
    assert_eq!(
        parse_mac("06:00:AC:10:00:02").unwrap(),
        [6, 0, 0xac, 0x10, 0, 2]
    );
    for (s, why) in [
        ("06:00:ac:10:00", "fewer than six"),
        ("06:00:ac:10:00:02:03", "more than six"),
        ("06:00:ac:10:00:0g", "hex digit"),
        ("06:00:ac:10:00:2", "two hex digits"),
        ("06:00:ac:10:00:+2", "hex digit"),
        ("", "two hex digits"),
        ("00:00:00:00:00:00", "all-zero"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
    ] {
        let err = parse_mac(s).unwrap_err().to_string();
        assert!(err.contains(why), "{s:?}: {err}");
    }
    assert_eq!(format_mac(&[6, 0, 0xac, 0x10, 0, 2]), "06:00:ac:10:00:02");
}

#[test]
fn generated_macs_are_stable_unicast_and_local() {
    let a = generate_mac("eth0");
    assert_eq!(a, generate_mac("eth0"));
    assert_ne!(a, generate_mac("eth1"));
    assert_eq!(a[0], 0x06);
    validate_mac(a).unwrap();
    // Pinned: the same id must give the same MAC in every release.
    assert_eq!(format_mac(&a), "06:04:a4:25:7a:60");
    let (net, _h, _c) = fake_net(&NetConfig {
        guest_mac: None,
        ..config(None)
    });
    assert_eq!(net.guest_mac(), a);
}
