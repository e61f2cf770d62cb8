//! virtio-block: a driver's queue (descriptors, available ring, buffers)
//! from the input, the real device serving it from a small image file.

#![no_main]

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use devices::virtio::block::{Block, BlockConfig, CacheType, EngineType, QUEUE_SIZE};
use devices::virtio::{Interrupt, VirtioDevice};
use flint_fuzz::{guest_mem, memfd, write_data, Driver, QueueInput, Reader};
use libfuzzer_sys::fuzz_target;

const MEM_SIZE: usize = 1 << 20;
const IMAGE_SIZE: u64 = 64 * 1024;

/// features u64; flags u8 (bit 0 read-only, bit 1 writeback); the queue;
/// the rest is buffer bytes at DATA.
struct Input<'a> {
    features: u64,
    read_only: bool,
    writeback: bool,
    queue: QueueInput,
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn read(bytes: &'a [u8]) -> Self {
        let mut r = Reader(bytes);
        let features = r.u64();
        let flags = r.u8();
        let queue = QueueInput::read(&mut r);
        Input {
            features,
            read_only: flags & 1 != 0,
            writeback: flags & 2 != 0,
            queue,
            data: r.0,
        }
    }
}

/// The image, made once per process and kept in memory; requests may
/// write into it.
fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<(File, PathBuf)> = OnceLock::new();
    &IMAGE.get_or_init(|| memfd(IMAGE_SIZE)).1
}

fuzz_target!(|bytes: &[u8]| {
    let input = Input::read(bytes);
    let mem = guest_mem(MEM_SIZE);
    write_data(&mem, input.data);
    let cfg = BlockConfig {
        drive_id: "fuzz".into(),
        path: image().clone(),
        read_only: input.read_only,
        cache: if input.writeback {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        },
        engine: EngineType::Sync,
    };
    let mut blk = Block::new(&cfg).expect("open the fuzz image");
    blk.ack_features(blk.avail_features() & input.features);
    let mut driver = Driver::new(&mem, 0, QUEUE_SIZE, &input.queue);
    let irq = Arc::new(Interrupt::new().expect("an EventFd"));
    if blk
        .activate(mem.clone(), irq, vec![driver.queue(QUEUE_SIZE)])
        .is_err()
    {
        return;
    }
    for r in 0..driver.rounds() {
        driver.publish(r);
        blk.handle_queue_event();
    }
    blk.reset();
});
