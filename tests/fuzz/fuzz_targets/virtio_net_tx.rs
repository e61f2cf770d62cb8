//! virtio-net TX: chains from the input's queue go out through the real
//! device to a backend that takes every frame (or fails, if asked).

#![no_main]

use std::sync::Arc;

use devices::virtio::net::{Net, NetConfig, QUEUE_SIZE, RX_INDEX, TX_INDEX};
use devices::virtio::{Interrupt, VirtioDevice};
use flint_fuzz::net::FakeBackend;
use flint_fuzz::{guest_mem, write_data, Driver, QueueInput, Reader};
use libfuzzer_sys::fuzz_target;

const MEM_SIZE: usize = 1 << 20;

/// features u64; fail_writes u8; the TX queue; the rest is buffer bytes
/// at DATA.
struct Input<'a> {
    features: u64,
    fail_writes: bool,
    tx: QueueInput,
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(bytes: &'a [u8]) -> Self {
        let mut r = Reader(bytes);
        Input {
            features: r.u64(),
            fail_writes: r.bool(),
            tx: QueueInput::read(&mut r),
            data: r.0,
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let input = Input::read(bytes);
    let mem = guest_mem(MEM_SIZE);
    write_data(&mem, input.data);
    let backend = FakeBackend::new(Vec::new(), input.fail_writes);
    let cfg = NetConfig {
        iface_id: "fuzz0".into(),
        ..Default::default()
    };
    let mut net = Net::with_backend(&cfg, Box::new(backend)).expect("a net device");
    net.ack_features(net.avail_features() & input.features);
    // RX stays empty: a queue of size 1 whose ring nothing is published in.
    let idle = QueueInput::default();
    let rx = Driver::new(&mem, RX_INDEX, QUEUE_SIZE, &idle);
    let mut tx = Driver::new(&mem, TX_INDEX, QUEUE_SIZE, &input.tx);
    let irq = Arc::new(Interrupt::new().expect("an EventFd"));
    let queues = vec![rx.queue(QUEUE_SIZE), tx.queue(QUEUE_SIZE)];
    if net.activate(mem.clone(), irq, queues).is_err() {
        return;
    }
    for r in 0..tx.rounds() {
        tx.publish(r);
        net.process_tx();
    }
    net.reset();
});
