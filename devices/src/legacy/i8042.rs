//! A minimal i8042 PS/2 controller with a keyboard and no mouse.
//!
//! Enough for Linux's i8042 and atkbd drivers to probe quickly and cleanly,
//! for `reboot=k` (command 0xFE pulses the CPU reset line, which here writes
//! [`I8042Device::reset_evt`]) and for the VMM to send Ctrl-Alt-Del.
//!
//! One bus device at [`I8042_BASE`] spans [`I8042_PORT_LEN`] ports: offset 0
//! is the data port (0x60), offset 4 the status/command port (0x64). The
//! ports in between belong to other chips (0x61 is system control port B,
//! which KVM's in-kernel PIT serves); they read as 0xff here.
//!
//! Every command completes synchronously, so the input buffer is always
//! empty (IBF never set) and the guest never waits on the controller.
//!
//! There is no auxiliary (mouse) device. Command 0xA8 therefore leaves the
//! AUXDIS bit of the control byte set: Linux's `i8042_check_aux()` reads the
//! control byte back after 0xA8 and, seeing the port still disabled, gives up
//! on AUX within a few milliseconds instead of waiting for IRQ 12 timeouts.
//! (`i8042.noaux` on the guest command line skips the probe entirely.)

use std::collections::VecDeque;
use std::io;

use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// First port of the controller (the data port).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const STATUS_COMMAND_OFFSET: u64 = 4;

// Status register bits.
const SR_OBF: u8 = 0x01;
const SR_SYS: u8 = 0x04;
const SR_CMD: u8 = 0x08;
/// Set while the keyboard is not inhibited by the key lock.
const SR_KEYLOCK: u8 = 0x10;
const SR_AUXDATA: u8 = 0x20;

// Control byte ("command byte") bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
/// What a BIOS leaves behind: keyboard interrupt on, system flag set after
/// its self-test, no mouse, and set 2 -> set 1 translation.
const CTR_DEFAULT: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE;

// Controller commands (written to port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_MODE: u8 = 0xca;
const CMD_WRITE_MODE: u8 = 0xcb;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_BUF: u8 = 0xd2;
const CMD_WRITE_AUX_BUF: u8 = 0xd3;
const CMD_WRITE_AUX_DEV: u8 = 0xd4;
/// 0xF0..=0xFF pulse the output-port lines whose bit is clear in the low
/// nibble for 6 us; bit 0 is the CPU reset line, so 0xFE is "reset".
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// Output port: bit 0 is the (active-low) reset line, bit 1 the A20 gate.
const OUTP_RESET_N: u8 = 0x01;
const OUTP_DEFAULT: u8 = OUTP_RESET_N | 0x02;
/// Controller mode (0xCA/0xCB): bit 0 set means PS/2 rather than ISA (AT).
const MODE_PS2: u8 = 0x01;

// Keyboard commands (written to port 0x60) and replies.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_RESET_DISABLE: u8 = 0xf5;
const KBD_RESET_DEFAULTS: u8 = 0xf6;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_NAK: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ID_FIRST: u8 = 0xab;
// The second ID byte is 0x83; the controller's translation turns it into
// 0x41, and Linux expects exactly that on a translating controller.
const KBD_ID_SECOND: u8 = 0x83;
const KBD_ID_SECOND_XLATED: u8 = 0x41;
const KBD_SCAN_SET_2: u8 = 0x02;
const KBD_SCAN_SET_2_XLATED: u8 = 0x41;

/// Ctrl, Alt, Del pressed, then released in reverse order.
///
/// The bytes are injected where the guest reads them, i.e. after the
/// controller's translation. With XLATE set (the default, which Linux keeps:
/// `i8042_direct` stays false) atkbd is told the port is translated
/// (SERIO_8042_XL) and maps the set 1 bytes it reads back to set 2 through
/// `atkbd_unxlate_table`: 0x1d -> 0x14 (Ctrl), 0x38 -> 0x11 (Alt),
/// 0xe0 0x53 -> 0xe0 0x71 (Del); a set 1 release is the make code | 0x80.
/// Without XLATE atkbd reads raw set 2, where a release is 0xf0 + make code.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// The controller's output buffer, modelled as the small FIFO Linux's
/// `i8042_flush()` expects (at most 16 bytes before it declares the
/// controller dead).
const OUTPUT_BUFFER_LEN: usize = 16;

/// Errors of the i8042 device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create the i8042 {which} EventFd: {source}")]
    EventFd {
        which: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the i8042 output buffer has room for {free} bytes but {needed} are needed; \
         the guest is not reading its keyboard"
    )]
    BufferFull { needed: usize, free: usize },
    #[error("the guest has disabled keyboard scanning (command 0xF5); keys would be ignored")]
    ScanningDisabled,
    #[error("could not signal the keyboard interrupt (IRQ 1): {0}")]
    Interrupt(#[source] io::Error),
}

/// One byte in the output buffer and the port it came from (the status
/// register's AUXDATA bit tells the driver which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutByte {
    value: u8,
    aux: bool,
}

/// What a snapshot keeps of the controller and its keyboard.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub ctr: u8,
    pub outp: u8,
    pub mode: u8,
    pub last_write_was_command: bool,
    pub pending_command: Option<u8>,
    pub pending_kbd_command: Option<u8>,
    pub scanning: bool,
    pub last_kbd_byte: u8,
    /// The output buffer, oldest first: (byte, from the aux port).
    pub output: Vec<(u8, bool)>,
    pub last_read: u8,
    pub dropped_bytes: u64,
}

/// The i8042 controller with its keyboard.
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
    interrupt_evt: EventFd,
    /// Control byte (commands 0x20/0x60).
    ctr: u8,
    /// Output port (commands 0xD0/0xD1).
    outp: u8,
    /// Controller mode (commands 0xCA/0xCB).
    mode: u8,
    /// Whether the last write went to the command port (status bit 3).
    last_write_was_command: bool,
    /// A controller command waiting for its data byte on port 0x60.
    pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter byte.
    pending_kbd_command: Option<u8>,
    /// Keyboard scanning, turned off by 0xF5 and on by 0xF4/0xF6/0xFF.
    scanning: bool,
    /// The last byte the keyboard sent, for its resend command.
    last_kbd_byte: u8,
    output: VecDeque<OutByte>,
    /// The data port keeps its last value once the buffer is empty.
    last_read: u8,
    /// Bytes dropped because the guest did not drain the output buffer.
    dropped_bytes: u64,
}

impl I8042Device {
    /// A controller in the state a BIOS leaves it in, with a keyboard attached.
    pub fn new() -> Result<Self, Error> {
        let eventfd =
            |which| EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd { which, source });
        Ok(Self {
            reset_evt: eventfd("reset")?,
            interrupt_evt: eventfd("interrupt")?,
            ctr: CTR_DEFAULT,
            outp: OUTP_DEFAULT,
            mode: MODE_PS2,
            last_write_was_command: false,
            pending_command: None,
            pending_kbd_command: None,
            scanning: true,
            last_kbd_byte: 0,
            output: VecDeque::with_capacity(OUTPUT_BUFFER_LEN),
            last_read: 0,
            dropped_bytes: 0,
        })
    }

    /// Written (with 1) when the guest resets the CPU through the controller;
    /// the VMM treats it as the guest asking to reboot, i.e. to end the VM.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    /// The keyboard interrupt: register it as an irqfd for IRQ 1.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.interrupt_evt
    }

    /// Bytes lost because the output buffer was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// The registers, the keyboard's state and the output buffer, for a
    /// snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            outp: self.outp,
            mode: self.mode,
            last_write_was_command: self.last_write_was_command,
            pending_command: self.pending_command,
            pending_kbd_command: self.pending_kbd_command,
            scanning: self.scanning,
            last_kbd_byte: self.last_kbd_byte,
            output: self.output.iter().map(|b| (b.value, b.aux)).collect(),
            last_read: self.last_read,
            dropped_bytes: self.dropped_bytes,
        }
    }

    /// Put back what [`I8042Device::state`] gave. A byte waiting in the
    /// output buffer raises the keyboard interrupt again (if enabled): the
    /// guest may not have seen it. An output buffer longer than the
    /// controller's is refused and changes nothing.
    pub fn restore(&mut self, state: &I8042State) -> Result<(), super::StateError> {
        if state.output.len() > OUTPUT_BUFFER_LEN {
            return Err(super::StateError::Invalid {
                device: "i8042",
                why: format!(
                    "{} bytes in the output buffer, which holds {OUTPUT_BUFFER_LEN}",
                    state.output.len()
                ),
            });
        }
        self.ctr = state.ctr;
        self.outp = state.outp;
        self.mode = state.mode;
        self.last_write_was_command = state.last_write_was_command;
        self.pending_command = state.pending_command;
        self.pending_kbd_command = state.pending_kbd_command;
        self.scanning = state.scanning;
        self.last_kbd_byte = state.last_kbd_byte;
        self.output = state
            .output
            .iter()
            .map(|&(value, aux)| OutByte { value, aux })
            .collect();
        self.last_read = state.last_read;
        self.dropped_bytes = state.dropped_bytes;
        self.raise_for_head()
            .map_err(|source| super::StateError::Interrupt {
                device: "i8042",
                source,
            })
    }

    /// Press and release Ctrl-Alt-Del on the keyboard. The whole sequence is
    /// queued or nothing is; the guest reads one byte per interrupt. Keys are
    /// queued even while the controller inhibits the keyboard (KBDDIS), as a
    /// keyboard buffers them; a guest that is still initialising its driver
    /// flushes them, so the VMM should allow for the request going unheard.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), Error> {
        if !self.scanning {
            return Err(Error::ScanningDisabled);
        }
        let keys: &[u8] = if self.ctr & CTR_XLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        let free = OUTPUT_BUFFER_LEN - self.output.len();
        if free < keys.len() {
            return Err(Error::BufferFull {
                needed: keys.len(),
                free,
            });
        }
        let mut result = Ok(());
        for &k in keys {
            if let Err(e) = self.push_kbd(k) {
                result = Err(Error::Interrupt(e));
            }
        }
        result
    }

    fn status(&self) -> u8 {
        let mut s = SR_KEYLOCK;
        if let Some(head) = self.output.front() {
            s |= SR_OBF;
            if head.aux {
                s |= SR_AUXDATA;
            }
        }
        if self.ctr & CTR_SYS != 0 {
            s |= SR_SYS;
        }
        if self.last_write_was_command {
            s |= SR_CMD;
        }
        s
    }

    /// Signal IRQ 1 if the byte now at the head of the buffer is keyboard
    /// data and the guest enabled the keyboard interrupt. Called once per
    /// byte reaching the head, so the edge-triggered irqfd gives exactly one
    /// interrupt per byte, as Linux's handler reads one byte per interrupt.
    /// Bytes from the aux side would need IRQ 12, which is not wired: only
    /// the 0xD3 loopback produces them, and Linux polls for it.
    fn raise_for_head(&self) -> io::Result<()> {
        match self.output.front() {
            Some(head) if !head.aux && self.ctr & CTR_KBDINT != 0 => self.interrupt_evt.write(1),
            _ => Ok(()),
        }
    }

    fn push(&mut self, value: u8, aux: bool) -> io::Result<()> {
        if self.output.len() >= OUTPUT_BUFFER_LEN {
            self.dropped_bytes += 1;
            debug!("i8042: output buffer full, dropped {value:#04x}");
            return Ok(());
        }
        self.output.push_back(OutByte { value, aux });
        if self.output.len() == 1 {
            self.raise_for_head()?;
        }
        Ok(())
    }

    fn push_kbd(&mut self, value: u8) -> io::Result<()> {
        self.last_kbd_byte = value;
        self.push(value, false)
    }

    fn pop(&mut self) -> u8 {
        if let Some(b) = self.output.pop_front() {
            self.last_read = b.value;
            if let Err(e) = self.raise_for_head() {
                crate::rate_limited!(warn, "i8042: cannot signal IRQ {I8042_KBD_IRQ}: {e}");
            }
        }
        self.last_read
    }

    fn set_ctr(&mut self, value: u8) -> io::Result<()> {
        let was_enabled = self.ctr & CTR_KBDINT != 0;
        self.ctr = value;
        // The real line is level-triggered: enabling the interrupt with a
        // byte already waiting asserts it at once.
        if !was_enabled {
            self.raise_for_head()?;
        }
        Ok(())
    }

    fn reset_cpu(&self) {
        debug!("i8042: guest requested a CPU reset");
        if let Err(e) = self.reset_evt.write(1) {
            warn!("i8042: cannot signal the reset request: {e}");
        }
    }

    fn command(&mut self, cmd: u8) -> io::Result<()> {
        // A new command cancels one still waiting for its data byte.
        self.pending_command = None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr, false)?,
            CMD_WRITE_CTR | CMD_WRITE_MODE | CMD_WRITE_OUTP | CMD_WRITE_KBD_BUF
            | CMD_WRITE_AUX_BUF | CMD_WRITE_AUX_DEV => self.pending_command = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            // No aux device: the port stays disabled (see the module docs).
            CMD_AUX_ENABLE => {}
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(INTERFACE_TEST_OK, false)?,
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYS;
                self.push(SELF_TEST_OK, false)?;
            }
            CMD_KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBDDIS,
            CMD_READ_MODE => self.push(self.mode, false)?,
            CMD_READ_OUTP => self.push(self.outp, false)?,
            CMD_PULSE_FIRST..=0xff => {
                if cmd & OUTP_RESET_N == 0 {
                    self.reset_cpu();
                }
            }
            _ => debug!("i8042: ignored unsupported command {cmd:#04x}"),
        }
        Ok(())
    }

    /// A data byte that completes a controller command.
    fn command_data(&mut self, cmd: u8, value: u8) -> io::Result<()> {
        match cmd {
            CMD_WRITE_CTR => self.set_ctr(value)?,
            CMD_WRITE_MODE => self.mode = value,
            CMD_WRITE_OUTP => {
                self.outp = value;
                if value & OUTP_RESET_N == 0 {
                    self.reset_cpu();
                }
            }
            CMD_WRITE_KBD_BUF => self.push(value, false)?,
            CMD_WRITE_AUX_BUF => self.push(value, true)?,
            // Nothing is attached to the aux port; the byte goes nowhere.
            _ => debug!("i8042: dropped byte {value:#04x} for the absent aux device"),
        }
        Ok(())
    }

    /// A byte sent to the keyboard.
    fn keyboard_write(&mut self, value: u8) -> io::Result<()> {
        let xlate = self.ctr & CTR_XLATE != 0;
        if let Some(cmd) = self.pending_kbd_command.take() {
            return match cmd {
                KBD_SCAN_SET if value == 0 => {
                    self.push_kbd(KBD_ACK)?;
                    let set = if xlate {
                        KBD_SCAN_SET_2_XLATED
                    } else {
                        KBD_SCAN_SET_2
                    };
                    self.push_kbd(set)
                }
                // Only set 2 is spoken; atkbd falls back to it on a NAK.
                KBD_SCAN_SET if value != 2 => self.push_kbd(KBD_NAK),
                // LED state and typematic rate have nothing to drive.
                _ => self.push_kbd(KBD_ACK),
            };
        }
        match value {
            KBD_SET_LEDS | KBD_SCAN_SET | KBD_SET_TYPEMATIC => {
                self.pending_kbd_command = Some(value);
                self.push_kbd(KBD_ACK)
            }
            KBD_ECHO => self.push_kbd(KBD_ECHO),
            KBD_GET_ID => {
                self.push_kbd(KBD_ACK)?;
                self.push_kbd(KBD_ID_FIRST)?;
                self.push_kbd(if xlate {
                    KBD_ID_SECOND_XLATED
                } else {
                    KBD_ID_SECOND
                })
            }
            KBD_ENABLE | KBD_RESET_DEFAULTS => {
                self.scanning = true;
                self.push_kbd(KBD_ACK)
            }
            KBD_RESET_DISABLE => {
                self.scanning = false;
                self.push_kbd(KBD_ACK)
            }
            KBD_RESEND => self.push(self.last_kbd_byte, false),
            KBD_RESET => {
                self.scanning = true;
                self.push_kbd(KBD_ACK)?;
                self.push_kbd(KBD_BAT_OK)
            }
            // The set 3 per-key mode commands (0xF7..=0xFD) change nothing
            // for a set 2 keyboard but are valid, so acknowledge them.
            0xf7..=0xfd => self.push_kbd(KBD_ACK),
            _ => {
                debug!("i8042: keyboard rejected command {value:#04x}");
                self.push_kbd(KBD_NAK)
            }
        }
    }

    fn data_write(&mut self, value: u8) -> io::Result<()> {
        match self.pending_command.take() {
            Some(cmd) => self.command_data(cmd, value),
            None => self.keyboard_write(value),
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.pop(),
            (STATUS_COMMAND_OFFSET, 1) => self.status(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let &[value] = data else {
            debug!(
                "i8042: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return;
        };
        let result = match offset {
            DATA_OFFSET => {
                self.last_write_was_command = false;
                self.data_write(value)
            }
            STATUS_COMMAND_OFFSET => {
                self.last_write_was_command = true;
                self.command(value)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            crate::rate_limited!(warn, "i8042: cannot signal IRQ {I8042_KBD_IRQ}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> I8042Device {
        I8042Device::new().unwrap()
    }

    fn cmd(d: &mut I8042Device, c: u8) {
        d.write(I8042_BASE, STATUS_COMMAND_OFFSET, &[c]);
    }

    fn put(d: &mut I8042Device, v: u8) {
        d.write(I8042_BASE, DATA_OFFSET, &[v]);
    }

    fn get(d: &mut I8042Device) -> u8 {
        let mut b = [0u8];
        d.read(I8042_BASE, DATA_OFFSET, &mut b);
        b[0]
    }

    fn status(d: &mut I8042Device) -> u8 {
        let mut b = [0u8];
        d.read(I8042_BASE, STATUS_COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn drain_irq(d: &I8042Device) -> u64 {
        d.interrupt_evt().read().unwrap_or(0)
    }

    #[test]
    fn reset_command_signals_reset_evt() {
        let mut d = dev();
        assert!(d.reset_evt().read().is_err());
        cmd(&mut d, 0xfe);
        assert_eq!(d.reset_evt().read().unwrap(), 1);
        // Pulsing other output lines is not a reset.
        cmd(&mut d, 0xff);
        cmd(&mut d, 0xfd);
        assert!(d.reset_evt().read().is_err());
        // Neither is writing the output port with the reset line high...
        cmd(&mut d, CMD_WRITE_OUTP);
        put(&mut d, 0x03);
        assert!(d.reset_evt().read().is_err());
        // ...but driving it low is.
        cmd(&mut d, CMD_WRITE_OUTP);
        put(&mut d, 0x02);
        assert_eq!(d.reset_evt().read().unwrap(), 1);
    }

    #[test]
    fn self_tests_pass() {
        let mut d = dev();
        cmd(&mut d, CMD_SELF_TEST);
        assert_eq!(
            status(&mut d) & (SR_OBF | SR_SYS | SR_CMD),
            SR_OBF | SR_SYS | SR_CMD
        );
        assert_eq!(get(&mut d), SELF_TEST_OK);
        assert_eq!(status(&mut d) & SR_OBF, 0);
        cmd(&mut d, CMD_KBD_TEST);
        assert_eq!(get(&mut d), 0x00);
        cmd(&mut d, CMD_AUX_TEST);
        assert_eq!(get(&mut d), 0x00);
    }

    #[test]
    fn control_byte_round_trip() {
        let mut d = dev();
        cmd(&mut d, CMD_READ_CTR);
        assert_eq!(get(&mut d), CTR_DEFAULT);
        cmd(&mut d, CMD_WRITE_CTR);
        put(&mut d, 0x74);
        cmd(&mut d, CMD_READ_CTR);
        assert_eq!(get(&mut d), 0x74);
        // The write went to the controller, not to the keyboard.
        assert_eq!(status(&mut d) & SR_OBF, 0);
        // KBDDIS via 0xAD/0xAE.
        cmd(&mut d, CMD_KBD_ENABLE);
        cmd(&mut d, CMD_READ_CTR);
        assert_eq!(get(&mut d), 0x64);
        cmd(&mut d, CMD_KBD_DISABLE);
        cmd(&mut d, CMD_READ_CTR);
        assert_eq!(get(&mut d), 0x74);
        // Mode byte.
        cmd(&mut d, CMD_WRITE_MODE);
        put(&mut d, 0x00);
        cmd(&mut d, CMD_READ_MODE);
        assert_eq!(get(&mut d), 0x00);
    }

    #[test]
    fn aux_port_stays_disabled() {
        let mut d = dev();
        cmd(&mut d, CMD_AUX_ENABLE);
        cmd(&mut d, CMD_READ_CTR);
        assert_ne!(get(&mut d) & CTR_AUXDIS, 0);
        // The loopback test echoes on the aux side, without IRQ 1.
        drain_irq(&d);
        cmd(&mut d, CMD_WRITE_AUX_BUF);
        put(&mut d, 0x5a);
        assert_eq!(status(&mut d) & (SR_OBF | SR_AUXDATA), SR_OBF | SR_AUXDATA);
        assert_eq!(get(&mut d), 0x5a);
        assert_eq!(drain_irq(&d), 0);
        // Bytes for the aux device vanish.
        cmd(&mut d, CMD_WRITE_AUX_DEV);
        put(&mut d, 0xf4);
        assert_eq!(status(&mut d) & SR_OBF, 0);
    }

    #[test]
    fn keyboard_commands_are_answered() {
        let mut d = dev();
        put(&mut d, KBD_RESET);
        assert_eq!([get(&mut d), get(&mut d)], [KBD_ACK, KBD_BAT_OK]);
        put(&mut d, KBD_GET_ID);
        assert_eq!(
            [get(&mut d), get(&mut d), get(&mut d)],
            [KBD_ACK, 0xab, 0x41]
        );
        put(&mut d, KBD_SET_LEDS);
        put(&mut d, 0x07);
        assert_eq!([get(&mut d), get(&mut d)], [KBD_ACK, KBD_ACK]);
        put(&mut d, KBD_SCAN_SET);
        put(&mut d, 3);
        assert_eq!([get(&mut d), get(&mut d)], [KBD_ACK, KBD_NAK]);
        put(&mut d, 0x42);
        assert_eq!(get(&mut d), KBD_NAK);
        // Without translation the ID is the raw one.
        cmd(&mut d, CMD_WRITE_CTR);
        put(&mut d, CTR_DEFAULT & !CTR_XLATE);
        put(&mut d, KBD_GET_ID);
        assert_eq!(
            [get(&mut d), get(&mut d), get(&mut d)],
            [KBD_ACK, 0xab, 0x83]
        );
    }

    #[test]
    fn data_reads_pop_in_order_with_one_interrupt_each() {
        let mut d = dev();
        cmd(&mut d, CMD_WRITE_KBD_BUF);
        put(&mut d, 0x11);
        assert_eq!(drain_irq(&d), 1);
        cmd(&mut d, CMD_WRITE_KBD_BUF);
        put(&mut d, 0x22);
        // Still the first byte's interrupt outstanding: no second edge yet.
        assert_eq!(drain_irq(&d), 0);
        assert_eq!(get(&mut d), 0x11);
        assert_eq!(drain_irq(&d), 1);
        assert_eq!(get(&mut d), 0x22);
        assert_eq!(drain_irq(&d), 0);
        assert_eq!(status(&mut d) & SR_OBF, 0);
        // An empty buffer repeats the last byte without side effects.
        assert_eq!(get(&mut d), 0x22);
    }

    #[test]
    fn enabling_the_interrupt_with_data_waiting_raises_it() {
        let mut d = dev();
        cmd(&mut d, CMD_WRITE_CTR);
        put(&mut d, CTR_DEFAULT & !CTR_KBDINT);
        put(&mut d, KBD_ECHO);
        assert_eq!(drain_irq(&d), 0);
        cmd(&mut d, CMD_WRITE_CTR);
        put(&mut d, CTR_DEFAULT);
        assert_eq!(drain_irq(&d), 1);
        assert_eq!(get(&mut d), KBD_ECHO);
    }

    #[test]
    fn ctrl_alt_del_queues_scancodes() {
        let mut d = dev();
        d.trigger_ctrl_alt_del().unwrap();
        assert_eq!(drain_irq(&d), 1);
        assert_eq!(status(&mut d) & (SR_OBF | SR_AUXDATA), SR_OBF);
        let got: Vec<u8> = (0..CTRL_ALT_DEL_SET1.len()).map(|_| get(&mut d)).collect();
        assert_eq!(got[..4], [0x1d, 0x38, 0xe0, 0x53]);
        assert_eq!(got, CTRL_ALT_DEL_SET1);
        assert_eq!(status(&mut d) & SR_OBF, 0);

        // Untranslated: set 2.
        cmd(&mut d, CMD_WRITE_CTR);
        put(&mut d, CTR_DEFAULT & !CTR_XLATE);
        d.trigger_ctrl_alt_del().unwrap();
        let got: Vec<u8> = (0..CTRL_ALT_DEL_SET2.len()).map(|_| get(&mut d)).collect();
        assert_eq!(got[..4], [0x14, 0x11, 0xe0, 0x71]);
    }

    #[test]
    fn ctrl_alt_del_needs_room_and_scanning() {
        let mut d = dev();
        d.trigger_ctrl_alt_del().unwrap();
        d.trigger_ctrl_alt_del().unwrap();
        assert!(matches!(
            d.trigger_ctrl_alt_del(),
            Err(Error::BufferFull { needed: 8, free: 0 })
        ));
        while status(&mut d) & SR_OBF != 0 {
            get(&mut d);
        }
        put(&mut d, KBD_RESET_DISABLE);
        get(&mut d);
        assert!(matches!(
            d.trigger_ctrl_alt_del(),
            Err(Error::ScanningDisabled)
        ));
        put(&mut d, KBD_ENABLE);
        get(&mut d);
        d.trigger_ctrl_alt_del().unwrap();
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut d = dev();
        for v in 0..=255u8 {
            for offset in 0..I8042_PORT_LEN + 2 {
                d.write(I8042_BASE, offset, &[v]);
                d.write(I8042_BASE, offset, &[v, v]);
                d.write(I8042_BASE, offset, &[]);
                let mut b = [0u8; 2];
                d.read(I8042_BASE, offset, &mut b);
                d.read(I8042_BASE, offset, &mut b[..1]);
                d.read(I8042_BASE, offset, &mut []);
            }
        }
        // The buffer never grows past its size however much is pushed.
        for _ in 0..100 {
            put(&mut d, KBD_GET_ID);
        }
        assert!(d.output.len() <= OUTPUT_BUFFER_LEN);
        assert!(d.dropped_bytes() > 0);
        let mut b = [0u8];
        d.read(I8042_BASE, 1, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn state_round_trips_with_unread_keys() {
        let mut d = dev();
        cmd(&mut d, CMD_WRITE_CTR);
        put(&mut d, CTR_DEFAULT & !CTR_AUXDIS);
        d.trigger_ctrl_alt_del().unwrap();
        let first = get(&mut d);
        let state: I8042State =
            serde_json::from_str(&serde_json::to_string(&d.state()).unwrap()).unwrap();
        assert_eq!(state.output.len(), CTRL_ALT_DEL_SET1.len() - 1);

        let mut r = dev();
        r.restore(&state).unwrap();
        assert_eq!(r.state(), state);
        assert_eq!(r.interrupt_evt().read().unwrap(), 1);
        assert_eq!(first, CTRL_ALT_DEL_SET1[0]);
        for &b in &CTRL_ALT_DEL_SET1[1..] {
            assert_eq!(get(&mut r), b);
        }

        let mut too_long = state.clone();
        too_long.output = vec![(0, false); OUTPUT_BUFFER_LEN + 1];
        let mut fresh = dev();
        let before = fresh.state();
        assert!(fresh.restore(&too_long).is_err());
        assert_eq!(fresh.state(), before);
    }
}
