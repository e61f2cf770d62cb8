//! Host-initiated connections: CONNECT lines, OK, refusals, reset.

use std::io::{Read, Write};

use super::*;

#[test]
fn connect_asks_the_guest_and_ok_follows_its_response() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let (mut host, req) = b.host_connect(52);
    assert_eq!(
        req,
        Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: FIRST_LOCAL_PORT,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: 0,
        }
    );
    // Nothing for the host before the guest answers.
    assert_eq!(host_read_now(&mut host).unwrap(), b"");

    b.send(hdr(OP_RESPONSE, 52, FIRST_LOCAL_PORT), &[]);
    assert_eq!(host_read_now(&mut host).unwrap(), b"OK 1073741824\n");

    host.write_all(b"ping").unwrap();
    b.run();
    let (h, payload) = b.recv_one();
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (OP_RW, FIRST_LOCAL_PORT, 52)
    );
    assert_eq!(payload, b"ping");

    b.send(hdr(OP_RW, 52, FIRST_LOCAL_PORT), b"pong");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(b.counters().host_connections, 1);
}

#[test]
fn each_host_connection_gets_a_fresh_port() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let (_h1, r1) = b.host_connect(52);
    let (_h2, r2) = b.host_connect(52);
    assert_eq!(r1.src_port, FIRST_LOCAL_PORT);
    assert_eq!(r2.src_port, FIRST_LOCAL_PORT + 1);
    assert_eq!(b.connections(), 2);
}

#[test]
fn guest_rst_instead_of_response_closes_the_host_stream_without_ok() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let (mut host, req) = b.host_connect(53);
    b.send(hdr(OP_RST, 53, req.src_port), &[]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"", "the host must see EOF and nothing else");
    assert_eq!(b.connections(), 0);
    assert!(b.recv().is_empty());
}

#[test]
fn bad_connect_lines_close_the_stream() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let bad: [&[u8]; 4] = [
        b"CONNECT abc\n",
        b"LISTEN 52\n",
        b"CONNECT 99999999999\n",
        &[b'C'; 40],
    ];
    for line in bad {
        let mut s = UnixStream::connect(&b.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(line).unwrap();
        b.run();
        // Closing with unread bytes makes the host's read fail with
        // ECONNRESET instead of EOF; either way, no OK.
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => assert_eq!(rest, b"", "{line:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{line:?}"),
        }
    }
    // A host that hangs up mid-line.
    let mut s = UnixStream::connect(&b.uds).unwrap();
    s.write_all(b"CONN").unwrap();
    drop(s);
    b.run();

    assert_eq!(b.counters().bad_connect_lines, 5);
    assert!(b.recv().is_empty(), "the guest heard of a bad line");
    assert_eq!(b.connections(), 0);
}

#[test]
fn a_line_in_pieces_still_connects() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let mut s = UnixStream::connect(&b.uds).unwrap();
    s.write_all(b"CONNE").unwrap();
    b.run();
    assert!(b.recv().is_empty());
    s.write_all(b"CT 1024\r\n").unwrap();
    b.run();
    let (h, _) = b.recv_one();
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 1024));
}

#[test]
fn reset_closes_connections_and_keeps_listening() {
    let mem = guest_mem(MEM_SIZE);
    let mut b = Bench::new(&mem, 8);
    let (mut host, req) = b.host_connect(54);
    b.send(hdr(OP_RESPONSE, 54, req.src_port), &[]);
    assert_eq!(host_read_now(&mut host).unwrap(), b"OK 1073741824\n");
    let l = b.listen(5004);
    let mut g = b.guest_connect(&l, 9, 5004);

    b.lp.lock().reset();
    assert_eq!(b.connections(), 0);
    assert_eq!(host_read_now(&mut host), None);
    assert_eq!(host_read_now(&mut g), None);
    b.run();
    assert!(b.uds.exists());

    // Until the driver is back, host connects are refused.
    let mut early = UnixStream::connect(&b.uds).unwrap();
    early.write_all(b"CONNECT 54\n").unwrap();
    b.run();
    assert_eq!(host_read_now(&mut early), None);

    // A new driver: the same socket serves again.
    b.reactivate();
    b.post_rx(4, 4096);
    b.run();
    let (_host, req) = b.host_connect(54);
    assert_eq!(req.dst_port, 54);
}

#[test]
fn dropping_the_device_removes_its_socket() {
    let dir = TempDir::new();
    let path = dir.path().join("d.sock");
    let cfg = VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    };
    let dev = Vsock::new(&cfg).unwrap();
    assert!(path.exists());
    // A second device cannot take the same path.
    assert!(matches!(Vsock::new(&cfg), Err(Error::PathExists(p)) if p == path));
    drop(dev);
    assert!(!path.exists());
}
