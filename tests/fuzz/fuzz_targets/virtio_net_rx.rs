//! virtio-net RX: frames from the input arrive from the backend and the
//! real device places them in the input's RX buffer chains.

#![no_main]

use std::sync::Arc;

use devices::virtio::net::{Net, NetConfig, QUEUE_SIZE, RX_INDEX, TX_INDEX};
use devices::virtio::{Interrupt, VirtioDevice};
use flint_fuzz::net::FakeBackend;
use flint_fuzz::{guest_mem, write_data, Driver, QueueInput, Reader};
use libfuzzer_sys::fuzz_target;

const MEM_SIZE: usize = 1 << 20;

/// features u64; mtu u16 (0: none); the RX queue; n u8 frames of (len
/// u16, bytes); the rest is buffer bytes at DATA.
struct Input<'a> {
    features: u64,
    mtu: Option<u16>,
    rx: QueueInput,
    frames: Vec<Vec<u8>>,
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(bytes: &'a [u8]) -> Self {
        let mut r = Reader(bytes);
        let features = r.u64();
        let mtu = Some(r.u16()).filter(|&m| m != 0);
        let rx = QueueInput::read(&mut r);
        let frames = (0..r.u8())
            .map(|_| {
                let len = usize::from(r.u16());
                r.bytes(len).to_vec()
            })
            .collect();
        Input {
            features,
            mtu,
            rx,
            frames,
            data: r.0,
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let input = Input::read(bytes);
    let mem = guest_mem(MEM_SIZE);
    write_data(&mem, input.data);
    let backend = FakeBackend::new(input.frames, false);
    let cfg = NetConfig {
        iface_id: "fuzz0".into(),
        mtu: input.mtu,
        ..Default::default()
    };
    let Ok(mut net) = Net::with_backend(&cfg, Box::new(backend)) else {
        return;
    };
    net.ack_features(net.avail_features() & input.features);
    let idle = QueueInput::default();
    let mut rx = Driver::new(&mem, RX_INDEX, QUEUE_SIZE, &input.rx);
    let tx = Driver::new(&mem, TX_INDEX, QUEUE_SIZE, &idle);
    let irq = Arc::new(Interrupt::new().expect("an EventFd"));
    let queues = vec![rx.queue(QUEUE_SIZE), tx.queue(QUEUE_SIZE)];
    if net.activate(mem.clone(), irq, queues).is_err() {
        return;
    }
    net.process_rx();
    for r in 0..rx.rounds() {
        rx.publish(r);
        net.process_rx();
    }
    net.reset();
});
