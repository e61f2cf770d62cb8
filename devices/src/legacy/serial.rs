//! The COM1 console: an 8250/16550A UART on port I/O, modelled by vm-superio.
//!
//! This wrapper adds what vm-superio leaves to its user: the interrupt EventFd
//! (the VMM registers it as an irqfd for IRQ 4), the bus interface, input flow
//! control for host stdin, and counters. A guest byte that cannot be written
//! to the host (for instance EPIPE on a closed stdout) is counted and dropped:
//! the guest keeps running and never waits on the host.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, warn};
use vm_superio::serial::{Error as SuperioError, SerialEvents, SerialState as UartState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// Legacy I/O base of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's interrupt line on the PIC / IOAPIC.
pub const COM1_IRQ: u32 = 4;
/// Number of consecutive ports the UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

// Register offsets this wrapper looks at itself; vm-superio handles the rest.
const MCR_OFFSET: u8 = 4;
const MCR_LOOP_BIT: u8 = 0x10;

/// Counters a VMM can read (and print at exit) without locking the device.
#[derive(Debug, Default)]
pub struct SerialMetrics {
    /// Guest bytes written to the host output.
    pub tx_bytes: AtomicU64,
    /// Guest bytes lost because the host output failed.
    pub tx_lost_bytes: AtomicU64,
    /// Host input bytes accepted into the receive FIFO.
    pub rx_bytes: AtomicU64,
    /// Host input bytes dropped because the guest put the UART in loopback
    /// mode, which disconnects the receive line.
    pub rx_lost_bytes: AtomicU64,
    /// Interrupts that could not be signalled through the EventFd.
    pub irq_errors: AtomicU64,
    /// Guest accesses that were not a single byte inside the 8 ports.
    pub bad_accesses: AtomicU64,
}

/// A plain copy of [`SerialMetrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SerialCounts {
    pub tx_bytes: u64,
    pub tx_lost_bytes: u64,
    pub rx_bytes: u64,
    pub rx_lost_bytes: u64,
    pub irq_errors: u64,
    pub bad_accesses: u64,
}

impl SerialMetrics {
    pub fn snapshot(&self) -> SerialCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SerialCounts {
            tx_bytes: get(&self.tx_bytes),
            tx_lost_bytes: get(&self.tx_lost_bytes),
            rx_bytes: get(&self.rx_bytes),
            rx_lost_bytes: get(&self.rx_lost_bytes),
            irq_errors: get(&self.irq_errors),
            bad_accesses: get(&self.bad_accesses),
        }
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The UART's registers and receive FIFO, for a snapshot (vm-superio's
/// `SerialState`, which has no serde).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes the guest has not read yet (at most the 64-byte FIFO).
    pub in_buffer: Vec<u8>,
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for UartState {
    fn from(s: &SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// vm-superio raises interrupts through its `Trigger` trait; the orphan rule
/// needs this newtype to implement it for an EventFd.
#[derive(Debug)]
struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The vm-superio event hooks: counters, plus a wake-up for the VMM when the
/// guest has emptied the receive FIFO, so held-back stdin can be fed again.
#[derive(Debug)]
struct SerialEventsImpl {
    metrics: Arc<SerialMetrics>,
    fifo_drained: EventFd,
}

impl SerialEvents for SerialEventsImpl {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        bump(&self.metrics.tx_bytes, 1);
    }

    fn tx_lost_byte(&self) {
        bump(&self.metrics.tx_lost_bytes, 1);
    }

    fn in_buffer_empty(&self) {
        // EAGAIN only when the counter is saturated, and then the VMM has a
        // wake-up pending anyway.
        let _ = self.fifo_drained.write(1);
    }
}

/// COM1 as a bus device. `W` receives the guest's output (stdout, a log file,
/// or `io::sink()`).
pub struct SerialDevice<W: Write + Send> {
    serial: Serial<EventFdTrigger, SerialEventsImpl, W>,
    metrics: Arc<SerialMetrics>,
    // True while the output keeps failing, so a dead stdout is reported once
    // per failure streak instead of once per guest byte.
    out_failing: bool,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART in its power-on state that writes guest output to `out`.
    pub fn new(out: W) -> io::Result<Self> {
        let metrics = Arc::new(SerialMetrics::default());
        let events = SerialEventsImpl {
            metrics: metrics.clone(),
            fifo_drained: EventFd::new(EFD_NONBLOCK)?,
        };
        let trigger = EventFdTrigger(EventFd::new(EFD_NONBLOCK)?);
        Ok(Self {
            serial: Serial::with_events(trigger, events, out),
            metrics,
            out_failing: false,
        })
    }

    /// A UART in the state [`SerialDevice::state`] gave, writing guest output
    /// to `out`, with new EventFds (the VMM registers them as for
    /// [`SerialDevice::new`]). An interrupt the state has pending is raised
    /// again on the new EventFd. Counters start at zero.
    pub fn from_state(state: &SerialState, out: W) -> Result<Self, super::StateError> {
        let device = "serial port";
        let eventfd = || {
            EventFd::new(EFD_NONBLOCK)
                .map_err(|source| super::StateError::EventFd { device, source })
        };
        let metrics = Arc::new(SerialMetrics::default());
        let events = SerialEventsImpl {
            metrics: metrics.clone(),
            fifo_drained: eventfd()?,
        };
        let trigger = EventFdTrigger(eventfd()?);
        let serial = Serial::from_state(&UartState::from(state), trigger, events, out).map_err(
            |e| match e {
                SuperioError::Trigger(source) | SuperioError::IOError(source) => {
                    super::StateError::Interrupt { device, source }
                }
                SuperioError::FullFifo => super::StateError::Invalid {
                    device,
                    why: format!(
                        "{} bytes in the receive FIFO, which holds 64",
                        state.in_buffer.len()
                    ),
                },
            },
        )?;
        Ok(Self {
            serial,
            metrics,
            out_failing: false,
        })
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.serial.state().into()
    }

    /// The interrupt line: register it as an irqfd for IRQ 4.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }

    /// Signalled each time the guest reads the receive FIFO empty. A VMM that
    /// stopped reading stdin because [`Self::fifo_capacity`] was 0 (or that
    /// holds bytes [`Self::enqueue_input`] did not take) resumes on it.
    pub fn fifo_drained_evt(&self) -> &EventFd {
        &self.serial.events().fifo_drained
    }

    /// Free space in the receive FIFO (64 bytes when empty).
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// The sink of the guest's output, e.g. to flush what it buffers.
    pub fn output_mut(&mut self) -> &mut W {
        self.serial.writer_mut()
    }

    /// Shared counters; clone the Arc to read them without the device lock.
    pub fn metrics(&self) -> &Arc<SerialMetrics> {
        &self.metrics
    }

    /// Queue host input for the guest and raise the receive interrupt if the
    /// guest enabled it. Returns how many bytes were taken: as many as the
    /// FIFO had room for, possibly 0. The caller keeps the rest and offers
    /// them again after [`Self::fifo_drained_evt`] fires.
    ///
    /// In loopback mode the UART's receive line is disconnected, as on real
    /// hardware: the bytes are reported taken (so the caller does not stall)
    /// and counted in `rx_lost_bytes`.
    ///
    /// A failure to raise the interrupt is logged and counted, not returned:
    /// the bytes are in the FIFO either way and the guest finds them on its
    /// next LSR read, so the caller must not offer them again.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        // Reading MCR has no side effects.
        if self.serial.read(MCR_OFFSET) & MCR_LOOP_BIT != 0 {
            bump(&self.metrics.rx_lost_bytes, bytes.len() as u64);
            return Ok(bytes.len());
        }
        let room = self.serial.fifo_capacity().min(bytes.len());
        if room == 0 {
            return Ok(0);
        }
        match self
            .serial
            .enqueue_raw_bytes(bytes.get(..room).unwrap_or(bytes))
        {
            Ok(n) => {
                bump(&self.metrics.rx_bytes, n as u64);
                Ok(n)
            }
            Err(SuperioError::Trigger(e)) => {
                // The bytes went in before the interrupt failed.
                bump(&self.metrics.rx_bytes, room as u64);
                self.irq_failed(&e);
                Ok(room)
            }
            // Unreachable with `room` checked above; treat as nothing taken.
            Err(SuperioError::FullFifo) => Ok(0),
            Err(SuperioError::IOError(e)) => Err(e),
        }
    }

    fn irq_failed(&self, e: &io::Error) {
        bump(&self.metrics.irq_errors, 1);
        crate::rate_limited!(warn, "serial: cannot signal IRQ {COM1_IRQ}: {e}");
    }

    fn register(offset: u64, len: usize) -> Option<u8> {
        (len == 1 && offset < SERIAL_PORT_LEN).then_some(offset as u8)
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (Self::register(offset, data.len()), &mut *data) {
            (Some(reg), [b]) => *b = self.serial.read(reg),
            _ => {
                bump(&self.metrics.bad_accesses, 1);
                debug!(
                    "serial: ignored {}-byte read at offset {offset}",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (Some(reg), &[v]) = (Self::register(offset, data.len()), data) else {
            bump(&self.metrics.bad_accesses, 1);
            debug!(
                "serial: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return;
        };
        match self.serial.write(reg, v) {
            Ok(()) => self.out_failing = false,
            // vm-superio has already counted the byte as lost (tx_lost_byte)
            // and still raised THRE, so the guest moves on to the next byte.
            Err(SuperioError::IOError(e)) => {
                if !self.out_failing {
                    warn!("serial: guest output is being dropped: {e}");
                }
                self.out_failing = true;
            }
            Err(SuperioError::Trigger(e)) => self.irq_failed(&e),
            Err(SuperioError::FullFifo) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Register offsets and bits from the 16550A data sheet.
    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 0x01;
    const LSR_DATA_READY: u8 = 0x01;

    fn read<W: Write + Send>(dev: &mut SerialDevice<W>, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(COM1_BASE, offset, &mut b);
        b[0]
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let mut dev = SerialDevice::new(Vec::new()).unwrap();
        for &b in b"hi\n" {
            dev.write(COM1_BASE, DATA, &[b]);
        }
        assert_eq!(dev.serial.writer().as_slice(), b"hi\n");
        assert_eq!(dev.metrics().snapshot().tx_bytes, 3);
    }

    #[test]
    fn input_sets_data_ready_and_interrupts_when_enabled() {
        let mut dev = SerialDevice::new(Vec::new()).unwrap();
        // Without IER.RDA the byte arrives silently.
        assert_eq!(dev.enqueue_input(b"a").unwrap(), 1);
        assert!(dev.interrupt_evt().read().is_err());
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read(&mut dev, DATA), b'a');
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
        assert_eq!(dev.fifo_drained_evt().read().unwrap(), 1);

        dev.write(COM1_BASE, IER, &[IER_RDA]);
        assert_eq!(dev.enqueue_input(b"xy").unwrap(), 2);
        assert_eq!(dev.interrupt_evt().read().unwrap(), 1);
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read(&mut dev, DATA), b'x');
        assert_eq!(read(&mut dev, DATA), b'y');
        assert_eq!(dev.metrics().snapshot().rx_bytes, 3);
    }

    #[test]
    fn input_respects_fifo_capacity() {
        let mut dev = SerialDevice::new(Vec::new()).unwrap();
        let cap = dev.fifo_capacity();
        assert_eq!(cap, 64);
        let input = vec![b'z'; cap + 10];
        assert_eq!(dev.enqueue_input(&input).unwrap(), cap);
        assert_eq!(dev.fifo_capacity(), 0);
        assert_eq!(dev.enqueue_input(&input[cap..]).unwrap(), 0);
        assert_eq!(dev.enqueue_input(&[]).unwrap(), 0);
        for _ in 0..cap {
            read(&mut dev, DATA);
        }
        assert_eq!(dev.fifo_capacity(), cap);
        assert!(dev.fifo_drained_evt().read().is_ok());
    }

    #[test]
    fn loopback_mode_drops_host_input() {
        let mut dev = SerialDevice::new(Vec::new()).unwrap();
        dev.write(COM1_BASE, u64::from(MCR_OFFSET), &[MCR_LOOP_BIT]);
        assert_eq!(dev.enqueue_input(b"abc").unwrap(), 3);
        assert_eq!(dev.metrics().snapshot().rx_lost_bytes, 3);
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
    }

    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let mut dev = SerialDevice::new(BrokenPipe).unwrap();
        dev.write(COM1_BASE, IER, &[0x02]); // THRE interrupt on
        let _ = dev.interrupt_evt().read();
        read(&mut dev, IIR); // acknowledges THRE, as the driver does
        for &b in b"lost" {
            dev.write(COM1_BASE, DATA, &[b]);
        }
        let counts = dev.metrics().snapshot();
        assert_eq!(counts.tx_lost_bytes, 4);
        assert_eq!(counts.tx_bytes, 0);
        // THRE still fires so the guest driver does not wait forever.
        assert!(dev.interrupt_evt().read().is_ok());
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut dev = SerialDevice::new(Vec::new()).unwrap();
        let mut wide = [0u8; 4];
        dev.read(COM1_BASE, DATA, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        dev.write(COM1_BASE, DATA, &[1, 2]);
        dev.write(COM1_BASE, DATA, &[]);
        let mut empty = [0u8; 0];
        dev.read(COM1_BASE, LSR, &mut empty);
        let mut one = [0u8];
        dev.read(COM1_BASE, 8, &mut one);
        assert_eq!(one, [0xff]);
        dev.write(COM1_BASE, u64::MAX, &[0]);
        assert!(dev.serial.writer().is_empty());
        assert_eq!(dev.metrics().snapshot().bad_accesses, 6);
    }

    #[test]
    fn state_round_trips_with_unread_input() {
        let mut dev = SerialDevice::new(Vec::new()).unwrap();
        dev.write(COM1_BASE, IER, &[IER_RDA]);
        dev.write(COM1_BASE, 7, &[0x5a]);
        assert_eq!(dev.enqueue_input(b"abc").unwrap(), 3);
        let state: SerialState =
            serde_json::from_str(&serde_json::to_string(&dev.state()).unwrap()).unwrap();
        assert_eq!(state.in_buffer, b"abc");

        let mut restored = SerialDevice::from_state(&state, Vec::new()).unwrap();
        assert_eq!(restored.state(), state);
        // The pending receive interrupt is raised again.
        assert_eq!(restored.interrupt_evt().read().unwrap(), 1);
        assert_eq!(read(&mut restored, 7), 0x5a);
        assert_eq!(read(&mut restored, IIR) & 0x0f, 0x04);
        assert_eq!(read(&mut restored, DATA), b'a');
        assert_eq!(read(&mut restored, DATA), b'b');
        assert_eq!(read(&mut restored, DATA), b'c');
        assert_eq!(read(&mut restored, LSR) & LSR_DATA_READY, 0);

        let mut too_much = state;
        too_much.in_buffer = vec![0; 65];
        assert!(matches!(
            SerialDevice::from_state(&too_much, Vec::new()),
            Err(crate::legacy::StateError::Invalid { .. })
        ));
    }
}
