//! Guest-initiated connections and packet addressing.

use std::io::{Read, Write};

use super::*;

#[test]
fn request_to_a_listening_socket_gets_response_and_relays_both_ways() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(5000);
    b.send(hdr(OP_REQUEST, 1234, 5000), &[]);
    let (h, payload) = b.recv_one();
    assert_eq!(
        h,
        Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: 5000,
            dst_port: 1234,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RESPONSE,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: 0,
        }
    );
    assert!(payload.is_empty());
    let (mut host, _) = l.accept().unwrap();
    assert_eq!(b.connections(), 1);

    // Guest to host.
    b.send(hdr(OP_RW, 1234, 5000), b"hello host");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");
    assert_eq!(b.drv.used(TX_INDEX).len(), 2);

    // Host to guest: the header carries how much the device forwarded.
    host.write_all(b"hello guest").unwrap();
    b.run();
    let (h, payload) = b.recv_one();
    assert_eq!(
        (h.op, h.len, h.src_port, h.dst_port),
        (OP_RW, 11, 5000, 1234)
    );
    assert_eq!((h.fwd_cnt, h.buf_alloc), (10, CONN_BUF_SIZE));
    assert_eq!(payload, b"hello guest");

    let c = b.counters();
    assert_eq!((c.guest_connections, c.tx_packets, c.tx_bytes), (1, 2, 10));
    assert_eq!((c.rx_packets, c.rx_bytes), (2, 11));
    assert!(b.irq.eventfd().read().unwrap() > 0);
}

#[test]
fn request_to_a_port_nobody_listens_on_is_reset() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 4);
    b.send(hdr(OP_REQUEST, 1234, 5001), &[]);
    let (h, _) = b.recv_one();
    assert_eq!(h.op, OP_RST);
    assert_eq!((h.src_cid, h.dst_cid), (2, 3));
    assert_eq!((h.src_port, h.dst_port), (5001, 1234));
    assert_eq!(b.connections(), 0);
    let c = b.counters();
    assert_eq!((c.guest_connect_failures, c.resets_sent), (1, 1));
}

#[test]
fn wrong_destination_or_source_cid_is_reset_and_counted() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6000);

    let mut to_other_vm = hdr(OP_REQUEST, 1, 6000);
    to_other_vm.dst_cid = 7;
    b.send(to_other_vm, &[]);
    let (h, _) = b.recv_one();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (OP_RST, 7, 3, 6000, 1)
    );

    let mut spoofed = hdr(OP_RW, 2, 6000);
    spoofed.src_cid = 42;
    b.send(spoofed, b"x");
    let (h, _) = b.recv_one();
    assert_eq!((h.op, h.src_cid, h.dst_cid), (OP_RST, 2, 42));

    // An RST is never answered.
    let mut rst = hdr(OP_RST, 3, 6000);
    rst.dst_cid = 9;
    b.send(rst, &[]);
    assert!(b.recv().is_empty());

    assert_eq!(b.counters().bad_address, 3);
    assert_eq!(b.connections(), 0);
    // Nothing reached the host.
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err());
}

#[test]
fn packets_for_unknown_connections_are_reset() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    for op in [
        OP_RW,
        OP_SHUTDOWN,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        OP_RESPONSE,
    ] {
        b.send(hdr(op, 10, 20), b"");
        let (h, _) = b.recv_one();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 20, 10), "op {op}");
    }
    b.send(hdr(OP_RST, 10, 20), &[]);
    assert!(b.recv().is_empty());
    assert_eq!(b.counters().unknown_connection, 5);
}

#[test]
fn concurrent_connections_keep_their_bytes_apart() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 32);
    let l1 = b.listen(7001);
    let l2 = b.listen(7002);
    let mut h1 = b.guest_connect(&l1, 100, 7001);
    let mut h2 = b.guest_connect(&l2, 101, 7002);
    // A second guest port to the same host port is its own connection.
    let mut h3 = b.guest_connect(&l1, 102, 7001);
    assert_eq!(b.connections(), 3);

    b.send(hdr(OP_RW, 101, 7002), b"two");
    b.send(hdr(OP_RW, 100, 7001), b"one");
    b.send(hdr(OP_RW, 102, 7001), b"three");
    assert_eq!(host_read_now(&mut h1).unwrap(), b"one");
    assert_eq!(host_read_now(&mut h2).unwrap(), b"two");
    assert_eq!(host_read_now(&mut h3).unwrap(), b"three");

    h3.write_all(b"from 3").unwrap();
    h1.write_all(b"from 1").unwrap();
    b.run();
    let mut got: Vec<(u32, u32, Vec<u8>)> = b
        .recv()
        .into_iter()
        .map(|(h, p)| (h.src_port, h.dst_port, p))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (7001, 100, b"from 1".to_vec()),
            (7001, 102, b"from 3".to_vec())
        ]
    );
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(5002);
    let mut host = b.guest_connect(&l, 1, 5002);
    b.send(hdr(OP_RST, 1, 5002), &[]);
    assert!(b.recv().is_empty(), "an RST is not answered");
    assert_eq!(b.connections(), 0);
    assert_eq!(host_read_now(&mut host), None);
}

#[test]
fn a_second_request_on_an_open_connection_resets_it() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(5003);
    let mut host = b.guest_connect(&l, 1, 5003);
    b.send(hdr(OP_REQUEST, 1, 5003), &[]);
    let (h, _) = b.recv_one();
    assert_eq!(h.op, OP_RST);
    assert_eq!(b.counters().protocol_errors, 1);
    assert_eq!(host_read_now(&mut host), None);
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 16);
    b.lp.lock().set_max_connections(2);
    let l = b.listen(5005);
    let _g = b.guest_connect(&l, 1, 5005);
    let (_h, _) = b.host_connect(60);
    // Full: a guest request is reset, a host stream closed unread.
    b.send(hdr(OP_REQUEST, 2, 5005), &[]);
    assert_eq!(b.recv_one().0.op, OP_RST);
    let mut s = UnixStream::connect(&b.uds).unwrap();
    b.run();
    assert_eq!(host_read_now(&mut s), None);
    assert_eq!(b.counters().over_limit, 2);
    assert_eq!(b.connections(), 2);
}
