//! The 8250/16550 UART at COM1, built on `vm-superio`'s emulation.
//!
//! The guest's output goes to a writer (the user's terminal); input is queued by the VMM with
//! [`SerialConsole::enqueue`] as far as the UART's FIFO has room. When the guest has drained the
//! FIFO, `input_drained` is signalled so the VMM can queue the rest: no byte typed by the user
//! is dropped, and nothing polls.

use std::io::Write;

use acpi_tables::Aml;
use acpi_tables::aml::{Device, EISAName, IO, Interrupt, Name, Path, ResourceTemplate};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::{AcpiDevice, BusDevice};

/// COM1's I/O base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;
/// Registers of one UART.
pub const UART_PORTS: u64 = 8;

/// Raises the UART's interrupt line by signalling an eventfd wired to an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the VMM that the guest emptied the receive FIFO.
#[derive(Debug)]
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A failed write means the counter is saturated: a wake-up is already pending.
        let _ = self.0.write(1);
    }
}

/// COM1 as seen by the guest.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, InputDrained, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole").finish_non_exhaustive()
    }
}

impl SerialConsole {
    /// A UART raising `irq`, writing the guest's output to `out`, and signalling
    /// `input_drained` when the guest has read all queued input.
    pub fn new(irq: EventFd, input_drained: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::with_events(IrqTrigger(irq), InputDrained(input_drained), out),
        }
    }

    /// Queue as much of `input` as the receive FIFO takes; returns how many bytes it took.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg), [byte]) if offset < UART_PORTS => *byte = self.uart.read(reg),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), [byte]) = (u8::try_from(offset), data)
            && offset < UART_PORTS
        {
            // An error here is the host terminal refusing output (e.g. a closed pipe): the
            // byte is lost, as on a disconnected serial line, and the guest carries on.
            let _ = self.uart.write(reg, *byte);
        }
    }
}

impl AcpiDevice for SerialConsole {
    /// `\_SB.COM1`: a 16550 UART (PNP0501) with its eight ports at [`COM1_PORT`] and an
    /// edge-triggered, active-high interrupt on [`COM1_IRQ`]. On the direct path's
    /// hardware-reduced platform Linux sets up no ISA interrupt routing of its own: the UART
    /// gets its interrupt only because ACPI describes it (the driver then binds through PNP and
    /// the GSI is routed through the IOAPIC).
    fn dsdt_aml(&self, aml: &mut Vec<u8>) {
        let port = COM1_PORT as u16;
        let io = IO::new(port, port, 1, UART_PORTS as u8);
        let interrupt = Interrupt::new(true, true, false, false, COM1_IRQ);
        let resources = ResourceTemplate::new(vec![&io, &interrupt]);
        Device::new(
            Path::new("_SB_.COM1"),
            vec![
                &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
                &Name::new(Path::new("_UID"), &0u8),
                &Name::new(Path::new("_CRS"), &resources),
            ],
        )
        .to_aml_bytes(aml);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_input_the_guest() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(
            irq.try_clone().unwrap(),
            drained.try_clone().unwrap(),
            Box::new(sink.clone()),
        );
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt, then queue input.
        s.write(1, &[1]);
        assert_eq!(s.enqueue(b"ab"), 2);
        assert!(irq.read().is_ok());
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d, [b'a']);
        s.read(0, &mut d);
        assert_eq!(d, [b'b']);
        assert!(
            drained.read().is_ok(),
            "draining the FIFO must wake the VMM"
        );
        // The FIFO takes 64 bytes; the rest must wait, not vanish.
        assert_eq!(s.enqueue(&[b'x'; 100]), 64);
        assert_eq!(s.enqueue(b"y"), 0);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut s = SerialConsole::new(
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
            Box::new(std::io::sink()),
        );
        let mut d = [0u8; 4];
        s.read(0, &mut d);
        assert_eq!(d, [0xff; 4]);
        s.write(9, &[1]);
        s.write(0, &[1, 2]);
        let mut d = [0u8];
        s.read(u64::MAX, &mut d);
        assert_eq!(d, [0xff]);
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn acpi_describes_com1_with_its_ports_and_interrupt() {
        let s = SerialConsole::new(
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
            Box::new(std::io::sink()),
        );
        let mut aml = Vec::new();
        s.dsdt_aml(&mut aml);
        // DeviceOp, then the path \_SB_.COM1 and _HID PNP0501 (EISA id 0x0105d041).
        assert_eq!(&aml[..2], &[0x5b, 0x82]);
        assert!(contains(&aml, b"_SB_COM1"));
        assert!(contains(&aml, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        // _CRS: IO(Decode16, 0x3F8, 0x3F8, 1, 8) and an extended interrupt (consumer, edge,
        // active-high, exclusive) for GSI 4.
        assert!(contains(
            &aml,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]
        ));
        assert!(contains(&aml, &[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]));
        // The exact bytes boot's DSDT builders wrote for COM1 before devices described
        // themselves.
        let before: &[u8] = &[
            0x5b, 0x82, 0x36, 0x2e, 0x5f, 0x53, 0x42, 0x5f, 0x43, 0x4f, 0x4d, 0x31, 0x08, 0x5f,
            0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x05, 0x01, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00,
            0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x16, 0x0a, 0x13, 0x47, 0x01, 0xf8, 0x03, 0xf8,
            0x03, 0x01, 0x08, 0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00, 0x79, 0x00,
        ];
        assert_eq!(aml, before);
        // No tables or fw_cfg files of its own.
        assert!(s.acpi_tables().is_empty());
        assert!(s.fw_cfg_files().is_empty());
    }
}
