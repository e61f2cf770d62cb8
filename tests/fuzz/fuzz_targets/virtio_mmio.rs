//! virtio-mmio: register reads and writes in any order on the real
//! transport around a real block device, kicks included, with guest
//! memory (rings and buffers) from the input.

#![no_main]

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{Block, BlockConfig, CacheType, EngineType};
use devices::virtio::mmio::{self, MmioTransport};
use devices::virtio::VirtioDevice;
use devices::BusDevice;
use flint_fuzz::{guest_mem, memfd, Reader};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 1 << 20;
const IMAGE_SIZE: u64 = 16 * 1024;

/// The registers a driver uses, so that one byte names one.
const REGISTERS: [u64; 24] = [
    mmio::MAGIC,
    mmio::DEVICE_FEATURES,
    mmio::DEVICE_FEATURES_SEL,
    mmio::DRIVER_FEATURES,
    mmio::DRIVER_FEATURES_SEL,
    mmio::QUEUE_SEL,
    mmio::QUEUE_NUM_MAX,
    mmio::QUEUE_NUM,
    mmio::QUEUE_READY,
    mmio::QUEUE_NOTIFY,
    mmio::INTERRUPT_STATUS,
    mmio::INTERRUPT_ACK,
    mmio::STATUS,
    mmio::QUEUE_DESC_LOW,
    mmio::QUEUE_DESC_HIGH,
    mmio::QUEUE_DRIVER_LOW,
    mmio::QUEUE_DRIVER_HIGH,
    mmio::QUEUE_DEVICE_LOW,
    mmio::QUEUE_DEVICE_HIGH,
    mmio::SHM_SEL,
    mmio::SHM_LEN_LOW,
    mmio::CONFIG_GENERATION,
    mmio::CONFIG,
    mmio::CONFIG + 8,
];

/// The image, made once per process and kept in memory; requests may
/// write into it.
fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<(File, PathBuf)> = OnceLock::new();
    &IMAGE.get_or_init(|| memfd(IMAGE_SIZE)).1
}

// Layout: n u16 memory writes of (addr u32, len u8, bytes); then operations
// until the input ends, each an opcode u8:
//   0: write u32 to REGISTERS[u8]    (then index u8, value u32)
//   1: read u32 from REGISTERS[u8]   (then index u8)
//   2: write any offset and width    (then offset u16, width u8, value u64)
//   3: read any offset and width     (then offset u16, width u8)
//   4: the event loop runs the device's queue
//   5: write guest memory            (then addr u32, len u8, bytes)
fuzz_target!(|bytes: &[u8]| {
    let mem = guest_mem(MEM_SIZE);
    let mut r = Reader(bytes);
    let write_mem = |r: &mut Reader| {
        let addr = u64::from(r.u32()) % MEM_SIZE as u64;
        let len = usize::from(r.u8());
        let data = r.bytes(len).to_vec();
        let _ = mem.write_slice(&data, GuestAddress(addr));
    };
    for _ in 0..r.u16().min(64) {
        write_mem(&mut r);
    }
    let cfg = BlockConfig {
        drive_id: "fuzz".into(),
        path: image().clone(),
        read_only: false,
        cache: CacheType::Unsafe,
        engine: EngineType::Sync,
    };
    let blk = Arc::new(Mutex::new(Block::new(&cfg).expect("open the fuzz image")));
    let dev: Arc<Mutex<dyn VirtioDevice>> = blk.clone();
    let mut t = MmioTransport::new(mem.clone(), dev).expect("a transport");
    let width = |w: u8| [1usize, 2, 4, 8][usize::from(w % 4)];
    for _ in 0..256 {
        if r.0.is_empty() {
            break;
        }
        match r.u8() % 6 {
            0 => {
                let reg = REGISTERS[usize::from(r.u8()) % REGISTERS.len()];
                t.write(0, reg, &r.u32().to_le_bytes());
            }
            1 => {
                let reg = REGISTERS[usize::from(r.u8()) % REGISTERS.len()];
                t.read(0, reg, &mut [0u8; 4]);
            }
            2 => {
                let offset = u64::from(r.u16()) % 0x200;
                let w = width(r.u8());
                t.write(0, offset, &r.u64().to_le_bytes()[..w]);
            }
            3 => {
                let offset = u64::from(r.u16()) % 0x200;
                let w = width(r.u8());
                t.read(0, offset, &mut [0u8; 8][..w]);
            }
            4 => blk.lock().expect("the device lock").handle_queue_event(),
            _ => write_mem(&mut r),
        }
    }
});
