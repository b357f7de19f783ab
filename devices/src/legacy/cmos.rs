//! The MC146818 CMOS real-time clock at ports 0x70/0x71, reading the host's current time (UTC)
//! on every access, in BCD and 24-hour mode as PC firmware leaves it.
//!
//! The guest may write the 114 bytes of CMOS RAM; writes to the clock registers are ignored, so
//! a guest cannot move the host's clock and always reads it correctly.

use std::time::{SystemTime, UNIX_EPOCH};

use acpi_tables::Aml;
use acpi_tables::aml::{Device, EISAName, IO, Name, Path, ResourceTemplate};

use crate::{AcpiDevice, BusDevice};

/// Index port; data is at +1.
pub const CMOS_PORT: u64 = 0x70;
/// Ports covered.
pub const CMOS_PORTS: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Divider 32.768 kHz, 1024 Hz rate; update-in-progress never set.
const REG_A_VALUE: u8 = 0x26;
/// 24-hour mode, BCD.
const REG_B_VALUE: u8 = 0x02;
/// Valid RAM and time.
const REG_D_VALUE: u8 = 0x80;

/// The CMOS RTC and its RAM.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

fn host_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(host_now)
    }
}

impl Cmos {
    /// A CMOS reading the host's clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the machine's RAM in the CMOS bytes where a PC BIOS leaves it, as QEMU does:
    /// base memory (0x15/0x16, 640 KiB), memory above 1 MiB in KiB (0x17/0x18 and 0x30/0x31,
    /// at most 65535), memory from 16 MiB to `below_4g` in 64 KiB units (0x34/0x35, at most
    /// 0xffff) and `above_4g` in 64 KiB units (0x5b-0x5d). OVMF's SMM access module reads the
    /// top of low RAM from 0x34/0x35 (it places TSEG below it), whatever fw_cfg says.
    pub fn set_memory_size(&mut self, below_4g: u64, above_4g: u64) {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        let mut put =
            |at: usize, bytes: &[u8]| self.ram[at..at + bytes.len()].copy_from_slice(bytes);
        put(0x15, &640u16.to_le_bytes());
        let ext = (below_4g.saturating_sub(MIB) / KIB).min(0xffff) as u16;
        put(0x17, &ext.to_le_bytes());
        put(0x30, &ext.to_le_bytes());
        let mid = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff) as u16;
        put(0x34, &mid.to_le_bytes());
        let high = (above_4g / (64 * KIB)).min(0xff_ffff) as u32;
        put(0x5b, &high.to_le_bytes()[..3]);
    }

    fn with_clock(now: fn() -> u64) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            now,
        }
    }

    fn register(&self, reg: u8) -> u8 {
        let t = Civil::from_unix((self.now)());
        match reg {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd((t.year % 100) as u8),
            REG_CENTURY => bcd((t.year / 100 % 100) as u8),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            r => self.ram[usize::from(r & 0x7f)],
        }
    }
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// A UTC calendar time.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: u32,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday, as the RTC counts.
    weekday: u8,
}

impl Civil {
    /// Days-to-civil conversion for the proleptic Gregorian calendar (Howard Hinnant's
    /// algorithm), exact for every date after 1970.
    fn from_unix(secs: u64) -> Civil {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil {
            year: year as u32,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: ((days + 4) % 7 + 1) as u8,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [b]) => *b = self.index,
            (1, [b]) => *b = self.register(self.index),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port is the NMI mask on real hardware; it selects nothing.
            (0, [b]) => self.index = b & 0x7f,
            (1, [b]) if self.index > REG_D && self.index != REG_CENTURY => {
                self.ram[usize::from(self.index)] = *b
            }
            _ => {}
        }
    }
}

impl AcpiDevice for Cmos {
    /// `\_SB.RTC_`: the CMOS RTC (PNP0B00) with its two ports at [`CMOS_PORT`].
    fn dsdt_aml(&self, aml: &mut Vec<u8>) {
        let port = CMOS_PORT as u16;
        let io = IO::new(port, port, 1, CMOS_PORTS as u8);
        let resources = ResourceTemplate::new(vec![&io]);
        Device::new(
            Path::new("_SB_.RTC_"),
            vec![
                &Name::new(Path::new("_HID"), &EISAName::new("PNP0B00")),
                &Name::new(Path::new("_CRS"), &resources),
            ],
        )
        .to_aml_bytes(aml);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register as the guest reads it through the ports.
    fn guest_read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn memory_size_bytes_are_where_ovmf_and_a_bios_read_them() {
        let mut c = Cmos::new();
        // 1 GiB below 4 GiB, 1 GiB above.
        c.set_memory_size(1 << 30, 1 << 30);
        // OVMF's SmmAccessPei: ((0x35 << 8 | 0x34) << 16) + 16 MiB is the top of low RAM.
        let mid = u64::from(guest_read(&mut c, 0x35)) << 8 | u64::from(guest_read(&mut c, 0x34));
        assert_eq!((mid << 16) + (16 << 20), 1 << 30);
        assert_eq!(
            [0x15, 0x16].map(|r| guest_read(&mut c, r)),
            640u16.to_le_bytes()
        );
        assert_eq!(
            [0x30, 0x31].map(|r| guest_read(&mut c, r)),
            0xffffu16.to_le_bytes()
        );
        assert_eq!(
            [0x5b, 0x5c, 0x5d].map(|r| guest_read(&mut c, r)),
            [0, 0x40, 0]
        );
        // Small machines do not wrap.
        c.set_memory_size(8 << 20, 0);
        assert_eq!([0x34, 0x35].map(|r| guest_read(&mut c, r)), [0, 0]);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(
            Civil::from_unix(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2026-11-29 04:30:15 UTC, a Sunday.
        assert_eq!(
            Civil::from_unix(1_795_926_615),
            Civil {
                year: 2026,
                month: 11,
                day: 29,
                hour: 4,
                minute: 30,
                second: 15,
                weekday: 1
            }
        );
        // Leap day.
        let t = Civil::from_unix(951_782_400); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn guest_reads_bcd_time_and_cannot_set_it() {
        let mut c = Cmos::with_clock(|| 1_795_926_615);
        let read = |c: &mut Cmos, reg: u8| {
            c.write(0, &[reg | 0x80]);
            let mut d = [0u8];
            c.read(1, &mut d);
            d[0]
        };
        assert_eq!(read(&mut c, REG_HOURS), 0x04);
        assert_eq!(read(&mut c, REG_MINUTES), 0x30);
        assert_eq!(read(&mut c, REG_YEAR), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_MONTH), 0x11);
        assert_eq!(read(&mut c, REG_B), REG_B_VALUE);
        c.write(0, &[REG_HOURS]);
        c.write(1, &[0x13]);
        assert_eq!(read(&mut c, REG_HOURS), 0x04);
        c.write(0, &[0x40]);
        c.write(1, &[0xab]);
        assert_eq!(read(&mut c, 0x40), 0xab);
    }

    #[test]
    fn acpi_describes_the_rtc_and_its_ports() {
        let c = Cmos::new();
        let mut aml = Vec::new();
        c.dsdt_aml(&mut aml);
        let contains = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        // DeviceOp, \_SB_.RTC_, _HID PNP0B00 (EISA id 0x000bd041).
        assert_eq!(&aml[..2], &[0x5b, 0x82]);
        assert!(contains(b"_SB_RTC_"));
        assert!(contains(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]));
        // _CRS: IO(Decode16, 0x70, 0x70, 1, 2) and nothing else (no interrupt).
        assert!(contains(&[
            0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79, 0x00
        ]));
        // The exact bytes boot's DSDT builders wrote for the RTC before devices described
        // themselves.
        let before: &[u8] = &[
            0x5b, 0x82, 0x27, 0x2e, 0x5f, 0x53, 0x42, 0x5f, 0x52, 0x54, 0x43, 0x5f, 0x08, 0x5f,
            0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x0b, 0x00, 0x08, 0x5f, 0x43, 0x52, 0x53, 0x11,
            0x0d, 0x0a, 0x0a, 0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79, 0x00,
        ];
        assert_eq!(aml, before);
        assert!(c.acpi_tables().is_empty());
        assert!(c.fw_cfg_files().is_empty());
    }
}
