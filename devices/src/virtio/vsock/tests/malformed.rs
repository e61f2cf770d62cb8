//! Chains cut in odd places, malformed chains, and the device's face to
//! the transport (config space, features, construction errors).

use std::io::Read;

use super::*;
use crate::virtio::{TYPE_VSOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

#[test]
fn header_and_payload_may_be_cut_anywhere() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(7100);
    let mut req = hdr(OP_REQUEST, 3, 7100).to_bytes().to_vec();
    // Every field boundary crossed by some cut.
    b.send_raw(&req, &[1, 9, 17, 30, 43]);
    assert_eq!(b.recv_one().0.op, OP_RESPONSE);
    let (mut host, _) = l.accept().unwrap();

    let payload = b"split across four buffers";
    let mut rw = hdr(OP_RW, 3, 7100);
    rw.len = payload.len() as u32;
    req = rw.to_bytes().to_vec();
    req.extend_from_slice(payload);
    b.send_raw(&req, &[40, 50, 51]);
    let mut got = vec![0u8; payload.len()];
    host.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
    assert_eq!(b.counters().tx_malformed, 0);
}

#[test]
fn rx_packets_may_span_buffers() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 0);
    // One RX chain of three buffers, the header cut in two.
    let segs = [
        (b.drv.alloc(10), 10u32),
        (b.drv.alloc(40), 40),
        (b.drv.alloc(100), 100),
    ];
    let descs: Vec<(u64, u32, bool)> = segs.iter().map(|&(a, l)| (a, l, true)).collect();
    b.drv.add_chain(RX_INDEX, &descs);
    b.kick(RX_INDEX);
    b.send(hdr(OP_REQUEST, 3, 7101), &[]);
    let used = b.drv.used(RX_INDEX);
    assert_eq!(used, vec![(0, 44)]);
    let mut raw = Vec::new();
    for (addr, len) in segs {
        raw.extend(b.drv.read(addr, len as usize));
    }
    let h = Header::from_bytes(raw[..HDR_LEN].try_into().unwrap());
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 7101, 3));
}

#[test]
fn malformed_tx_chains_are_counted_and_consumed() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let good = hdr(OP_REQUEST, 3, 7102).to_bytes();

    // Shorter than a header.
    b.send_raw(&good[..20], &[10]);
    // len over 64 KiB, with the bytes there.
    let mut h = hdr(OP_RW, 3, 7102);
    h.len = MAX_PKT_LEN + 1;
    let mut big = h.to_bytes().to_vec();
    big.resize(HDR_LEN + MAX_PKT_LEN as usize + 1, 0);
    b.send_raw(&big, &[]);
    // len beyond the chain.
    h.len = 100;
    let mut short = h.to_bytes().to_vec();
    short.extend_from_slice(&[0; 10]);
    b.send_raw(&short, &[HDR_LEN]);
    // Not a stream packet.
    let mut dgram = hdr(OP_RW, 3, 7102);
    dgram.type_ = 3;
    b.send_raw(&dgram.to_bytes(), &[]);
    // A device-writable descriptor.
    let addr = b.drv.alloc(44);
    b.drv.write(addr, &good);
    b.drv.add_chain(TX_INDEX, &[(addr, 44, true)]);
    // A buffer outside guest memory.
    b.drv.add_chain(TX_INDEX, &[(OUTSIDE, 44, false)]);
    // Header fine, payload outside memory.
    let addr = b.drv.alloc(44);
    h.len = 8;
    b.drv.write(addr, &h.to_bytes());
    b.drv
        .add_chain(TX_INDEX, &[(addr, 44, false), (OUTSIDE, 8, false)]);
    b.kick(TX_INDEX);
    b.run();

    let c = b.counters();
    assert_eq!((c.tx_malformed, c.tx_packets), (7, 0));
    // Every chain went back to the guest, with nothing written.
    let used = b.drv.used(TX_INDEX);
    assert_eq!(used.len(), 7);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert!(b.recv().is_empty(), "a malformed chain was answered");

    // The queue still works.
    let l = b.listen(7102);
    b.send(hdr(OP_REQUEST, 3, 7102), &[]);
    assert_eq!(b.recv_one().0.op, OP_RESPONSE);
    drop(l);
}

#[test]
fn malformed_rx_chains_are_returned_and_counted() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 0);
    let ro = b.drv.alloc(4096);
    b.drv.add_chain(RX_INDEX, &[(ro, 4096, false)]);
    let tiny = b.drv.alloc(44);
    b.drv.add_chain(RX_INDEX, &[(tiny, 44, true)]);
    b.drv.add_chain(RX_INDEX, &[(OUTSIDE, 4096, true)]);
    let good = b.drv.alloc(4096);
    let good_head = b.drv.add_chain(RX_INDEX, &[(good, 4096, true)]);
    b.kick(RX_INDEX);
    b.send(hdr(OP_RW, 3, 7103), b"nobody");

    assert_eq!(b.counters().rx_malformed, 3);
    let used = b.drv.used(RX_INDEX);
    assert_eq!(
        used,
        vec![(0, 0), (1, 0), (2, 0), (u32::from(good_head), 44)]
    );
    let raw = b.drv.read(good, HDR_LEN);
    assert_eq!(Header::from_bytes(raw[..].try_into().unwrap()).op, OP_RST);
}

#[test]
fn config_space_features_and_queues() {
    let dir = TempDir::new();
    let cfg = VsockConfig {
        guest_cid: 0x1_2345_6789,
        uds_path: dir.path().join("c.sock"),
    };
    assert!(matches!(
        Vsock::new(&cfg),
        Err(Error::InvalidCid(0x1_2345_6789))
    ));
    let cfg = VsockConfig {
        guest_cid: 0x8765_4321,
        ..cfg
    };
    let dev = Vsock::new(&cfg).unwrap();
    assert_eq!(dev.device_type(), TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.queue_events().len(), 3);
    assert_eq!(
        dev.avail_features(),
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    );
    let mut data = [0xffu8; 8];
    dev.read_config(0, &mut data);
    assert_eq!(data, [0x21, 0x43, 0x65, 0x87, 0, 0, 0, 0]);
    let mut high = [0xffu8; 4];
    dev.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    assert_eq!(dev.guest_cid(), 0x8765_4321);
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let dir = TempDir::new();
    let path = dir.path().join("x.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        let cfg = VsockConfig {
            guest_cid: cid,
            uds_path: path.clone(),
        };
        let e = Vsock::new(&cfg).unwrap_err();
        assert!(matches!(e, Error::InvalidCid(c) if c == cid), "{e}");
    }
    let missing = dir.path().join("no/such/dir/v.sock");
    let e = Vsock::new(&VsockConfig {
        guest_cid: 3,
        uds_path: missing.clone(),
    })
    .unwrap_err();
    assert!(matches!(&e, Error::DirMissing(p) if *p == missing));
    assert!(e.to_string().contains("no/such/dir/v.sock"), "{e}");

    let long = dir.path().join("l".repeat(100));
    let e = Vsock::new(&VsockConfig {
        guest_cid: 3,
        uds_path: long,
    })
    .unwrap_err();
    assert!(matches!(e, Error::PathTooLong { .. }), "{e}");

    std::fs::write(&path, b"").unwrap();
    let e = Vsock::new(&VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    })
    .unwrap_err();
    assert!(matches!(e, Error::PathExists(_)), "{e}");
    assert!(e.to_string().contains("x.sock"), "{e}");
}
