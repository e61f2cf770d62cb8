//! The i8042 keyboard controller: port reads and writes in any order, and
//! the host's Ctrl+Alt+Del.

#![no_main]

use devices::legacy::I8042Device;
use devices::BusDevice;
use flint_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

// Operations until the input ends, each an opcode u8:
//   0: write the data port (value u8)
//   1: write the command port (value u8)
//   2: read the data port
//   3: read the status port
//   4: Ctrl+Alt+Del from the host
//   5: access of any offset and width (offset u8, width u8, write u8, value u32)
fuzz_target!(|bytes: &[u8]| {
    let mut kbd = I8042Device::new().expect("an i8042");
    let mut r = Reader(bytes);
    for _ in 0..4096 {
        if r.0.is_empty() {
            break;
        }
        match r.u8() % 6 {
            0 => kbd.write(0, 0, &[r.u8()]),
            1 => kbd.write(0, 4, &[r.u8()]),
            2 => kbd.read(0, 0, &mut [0u8]),
            3 => kbd.read(0, 4, &mut [0u8]),
            4 => {
                let _ = kbd.trigger_ctrl_alt_del();
            }
            _ => {
                let offset = u64::from(r.u8());
                let width = [0usize, 1, 2, 4][usize::from(r.u8() % 4)];
                let write = r.bool();
                let mut data = r.u32().to_le_bytes();
                if write {
                    kbd.write(0, offset, &data[..width]);
                } else {
                    kbd.read(0, offset, &mut data[..width]);
                }
            }
        }
        // The VMM drains these; a full EventFd counter must not matter.
        let _ = kbd.interrupt_evt().read();
        let _ = kbd.reset_evt().read();
    }
});
