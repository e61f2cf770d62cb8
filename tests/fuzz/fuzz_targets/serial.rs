//! The 16550A serial port: port reads and writes, and host input, in any
//! order.

#![no_main]

use devices::legacy::SerialDevice;
use devices::BusDevice;
use flint_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

// Operations until the input ends, each an opcode u8:
//   0: write (offset u8, value u8)
//   1: read (offset u8)
//   2: host input (len u8, bytes)
//   3: access of another width (offset u8, width u8, write u8, value u32)
fuzz_target!(|bytes: &[u8]| {
    let mut serial = SerialDevice::new(std::io::sink()).expect("a serial device");
    let mut r = Reader(bytes);
    for _ in 0..4096 {
        if r.0.is_empty() {
            break;
        }
        match r.u8() % 4 {
            0 => {
                let offset = u64::from(r.u8() % 8);
                serial.write(0, offset, &[r.u8()]);
            }
            1 => {
                let offset = u64::from(r.u8() % 8);
                serial.read(0, offset, &mut [0u8]);
            }
            2 => {
                let len = usize::from(r.u8());
                let input = r.bytes(len).to_vec();
                let _ = serial.enqueue_input(&input);
            }
            _ => {
                let offset = u64::from(r.u8());
                let width = [0usize, 1, 2, 4][usize::from(r.u8() % 4)];
                let write = r.bool();
                let mut data = r.u32().to_le_bytes();
                if write {
                    serial.write(0, offset, &data[..width]);
                } else {
                    serial.read(0, offset, &mut data[..width]);
                }
            }
        }
    }
});
