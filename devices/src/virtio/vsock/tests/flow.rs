//! Credit-based flow control and shutdown.

use std::io::Write;
use std::net::Shutdown;

use super::*;

/// A guest connection from port 1 to host port `port` whose REQUEST
/// advertises `buf_alloc`.
fn connect_with_buf(b: &mut Bench, l: &UnixListener, port: u32, buf_alloc: u32) -> UnixStream {
    let mut req = hdr(OP_REQUEST, 1, port);
    req.buf_alloc = buf_alloc;
    b.send(req, &[]);
    assert_eq!(b.recv_one().0.op, OP_RESPONSE);
    l.accept().unwrap().0
}

fn credit(op: u16, port: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    let mut h = hdr(op, 1, port);
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd_cnt;
    h
}

#[test]
fn the_device_never_sends_more_than_the_guest_has_room_for() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 16);
    let l = b.listen(6100);
    let mut host = connect_with_buf(&mut b, &l, 6100, 10);
    host.write_all(b"abcdefghijklmnopqrstuvwxy").unwrap();
    b.run();
    let (h, p) = b.recv_one();
    assert_eq!((h.op, h.len), (OP_RW, 10));
    assert_eq!(p, b"abcdefghij");

    // No credit left: more buffers and kicks change nothing, and the host
    // stream is not polled (run() would panic on a busy loop).
    b.post_rx(4, 4096);
    b.run();
    assert!(b.recv().is_empty());

    // The guest consumed 10 bytes.
    b.send(credit(OP_CREDIT_UPDATE, 6100, 10, 10), &[]);
    let (h, p) = b.recv_one();
    assert_eq!((h.op, p.as_slice()), (OP_RW, &b"klmnopqrst"[..]));
    assert!(b.recv().is_empty());

    // A bigger buffer: the rest fits at once.
    b.send(credit(OP_CREDIT_UPDATE, 6100, 100, 20), &[]);
    let (h, p) = b.recv_one();
    assert_eq!((h.op, p.as_slice()), (OP_RW, &b"uvwxy"[..]));
    assert_eq!(b.counters().rx_bytes, 25);
}

#[test]
fn data_waits_for_guest_buffers_and_uses_their_size() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 0);
    let l = b.listen(6101);
    b.post_rx(1, 4096);
    let mut host = connect_with_buf(&mut b, &l, 6101, GUEST_BUF);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&data).unwrap();
    b.run();
    assert!(b.recv().is_empty(), "no buffer was posted");

    b.post_rx(4, 4096);
    b.run();
    let got = b.recv();
    let sizes: Vec<u32> = got.iter().map(|(h, _)| h.len).collect();
    assert_eq!(sizes, [4096 - 44, 4096 - 44, 10_000 - 2 * (4096 - 44)]);
    let joined: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(joined, data);
}

#[test]
fn credit_request_is_answered_with_credit_update() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6102);
    let _host = connect_with_buf(&mut b, &l, 6102, GUEST_BUF);
    b.send(hdr(OP_RW, 1, 6102), b"12345");
    b.send(hdr(OP_CREDIT_REQUEST, 1, 6102), &[]);
    let (h, _) = b.recv_one();
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt, h.src_port, h.dst_port),
        (OP_CREDIT_UPDATE, CONN_BUF_SIZE, 5, 6102, 1)
    );
}

#[test]
fn forwarding_a_lot_tells_the_guest_unasked() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6103);
    let mut host = connect_with_buf(&mut b, &l, 6103, GUEST_BUF);
    let chunk = vec![7u8; MAX_PKT_LEN as usize];
    b.send(hdr(OP_RW, 1, 6103), &chunk);
    let (h, _) = b.recv_one();
    assert_eq!((h.op, h.fwd_cnt), (OP_CREDIT_UPDATE, MAX_PKT_LEN));
    assert_eq!(host_read_now(&mut host).unwrap(), chunk);
}

#[test]
fn a_slow_host_gets_everything_in_order_and_credit_follows() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 32);
    let l = b.listen(6104);
    let mut host = connect_with_buf(&mut b, &l, 6104, GUEST_BUF);
    // Exactly the device's buffer, more than a socket buffer holds.
    let total = CONN_BUF_SIZE as usize;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 256) as u8).collect();
    for part in data.chunks(MAX_PKT_LEN as usize) {
        b.send(hdr(OP_RW, 1, 6104), part);
    }
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(host_read_now(&mut host).unwrap());
        b.run();
        if got.len() == total {
            break;
        }
    }
    assert!(
        got == data,
        "the host got {} of {total} bytes, or out of order",
        got.len()
    );
    // The guest heard of (nearly) all of it: less than the update
    // threshold can be forwarded unannounced.
    let last = b.recv().pop().unwrap().0;
    assert_eq!(last.op, OP_CREDIT_UPDATE);
    assert!(
        last.fwd_cnt > CONN_BUF_SIZE - CREDIT_UPDATE_THRESHOLD,
        "{last:?}"
    );
    assert_eq!(b.counters().tx_bytes, total as u64);
}

#[test]
fn data_beyond_the_devices_buffer_resets_the_connection() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6105);
    let _host = connect_with_buf(&mut b, &l, 6105, GUEST_BUF);
    let chunk = vec![1u8; MAX_PKT_LEN as usize];
    // The host never reads: once its socket is full the device buffers,
    // and past CONN_BUF_SIZE the guest has ignored the credit it was given.
    let mut rst = None;
    for _ in 0..16 {
        b.send(hdr(OP_RW, 1, 6105), &chunk);
        if let Some((h, _)) = b.recv().into_iter().find(|(h, _)| h.op == OP_RST) {
            rst = Some(h);
            break;
        }
    }
    assert!(rst.is_some(), "no RST after 1 MiB the host never read");
    assert_eq!(b.counters().protocol_errors, 1);
    assert_eq!(b.connections(), 0);
}

#[test]
fn host_closing_mid_stream_sends_shutdown_then_rst_ends_it() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6106);
    let mut host = connect_with_buf(&mut b, &l, 6106, GUEST_BUF);
    host.write_all(b"last words").unwrap();
    drop(host);
    b.run();
    let got = b.recv();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0.op, got[0].1.as_slice()),
        (OP_RW, &b"last words"[..])
    );
    assert_eq!((got[1].0.op, got[1].0.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(b.connections(), 1);

    // The guest closes its end too: both directions are done.
    let mut shut = hdr(OP_SHUTDOWN, 1, 6106);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    b.send(shut, &[]);
    let (h, _) = b.recv_one();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 6106, 1));
    assert_eq!(b.connections(), 0);
}

#[test]
fn guest_writing_to_a_closed_host_is_reset() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6107);
    let host = connect_with_buf(&mut b, &l, 6107, GUEST_BUF);
    drop(host);
    b.run();
    assert_eq!(b.recv_one().0.op, OP_SHUTDOWN);
    b.send(hdr(OP_RW, 1, 6107), b"anyone there?");
    assert_eq!(b.recv_one().0.op, OP_RST);
    assert_eq!(b.connections(), 0);
}

#[test]
fn guest_shutdown_send_gives_the_host_eof_and_the_host_may_still_talk() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6108);
    let mut host = connect_with_buf(&mut b, &l, 6108, GUEST_BUF);
    b.send(hdr(OP_RW, 1, 6108), b"request");
    let mut shut = hdr(OP_SHUTDOWN, 1, 6108);
    shut.flags = SHUTDOWN_SEND;
    b.send(shut, &[]);
    assert!(b.recv().is_empty());
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut host, &mut got).unwrap();
    assert_eq!(got, b"request");

    host.write_all(b"reply").unwrap();
    b.run();
    let (h, p) = b.recv_one();
    assert_eq!((h.op, p.as_slice()), (OP_RW, &b"reply"[..]));

    // The host is done as well: nothing flows any more, so RST.
    host.shutdown(Shutdown::Write).unwrap();
    b.run();
    assert_eq!(b.recv_one().0.op, OP_RST);
    assert_eq!(b.connections(), 0);
}

#[test]
fn guest_shutdown_rcv_stops_reading_the_host() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let l = b.listen(6109);
    let mut host = connect_with_buf(&mut b, &l, 6109, GUEST_BUF);
    let mut shut = hdr(OP_SHUTDOWN, 1, 6109);
    shut.flags = SHUTDOWN_RCV;
    b.send(shut, &[]);
    host.write_all(b"unwanted").unwrap();
    b.run();
    assert!(b.recv().is_empty());
    // The guest still sends.
    b.send(hdr(OP_RW, 1, 6109), b"still here");
    assert_eq!(host_read_now(&mut host).unwrap(), b"still here");
    shut.flags = SHUTDOWN_SEND;
    b.send(shut, &[]);
    assert_eq!(b.recv_one().0.op, OP_RST);
}
