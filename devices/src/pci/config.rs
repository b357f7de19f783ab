//! A type-0 PCI configuration space: identity registers, BARs, the command register and a
//! capability list.
//!
//! Writes go through a per-byte mask, so a guest can only change the bits a real device would
//! let it change; everything else reads back what the device put there. BAR sizing needs no
//! special case: the address bits below the BAR's size are not writable, so writing all ones
//! reads back the size mask.

/// Size of the configuration space of one function (PCIe extended space included, as ECAM
/// exposes it).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enabled.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx assertion disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS: usize = 0x06;
const STATUS_CAPABILITIES: u16 = 1 << 4;
const BAR0: usize = 0x10;
/// Number of BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
/// First byte after the standard header: where capabilities go.
const FIRST_CAPABILITY: usize = 0x40;
/// Capabilities stay in the first 256 bytes, where conventional config access reaches.
const CAPABILITIES_END: usize = 0x100;

/// Identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, subclass and programming interface (bits 23:16, 15:8, 7:0).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// One memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// Whether the BAR is 64 bits wide (it then takes two registers).
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// Errors from building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index or size is invalid.
    #[error("invalid BAR {index} of size {size:#x}")]
    InvalidBar {
        /// BAR register index.
        index: usize,
        /// Requested size.
        size: u64,
    },
    /// The capabilities do not fit in the first 256 bytes.
    #[error("the PCI capabilities do not fit in the configuration space")]
    CapabilitiesFull,
}

/// The configuration space of one function.
#[derive(Clone)]
pub struct PciConfig {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; BAR_COUNT],
    /// BAR registers in use, including the upper halves of 64-bit BARs.
    taken: [bool; BAR_COUNT],
    next_capability: usize,
    last_capability: Option<usize>,
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field("vendor", &self.read_u16(0))
            .field("device", &self.read_u16(2))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl PciConfig {
    /// A function with these IDs, no BARs, no capabilities and no legacy interrupt pin.
    pub fn new(ids: PciIds) -> Self {
        let mut c = PciConfig {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; BAR_COUNT],
            taken: [false; BAR_COUNT],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        c.set_u16(0x00, ids.vendor);
        c.set_u16(0x02, ids.device);
        c.regs[0x08] = ids.revision;
        c.regs[0x09] = ids.class as u8;
        c.regs[0x0a] = (ids.class >> 8) as u8;
        c.regs[0x0b] = (ids.class >> 16) as u8;
        c.set_u16(0x2c, ids.subsystem_vendor);
        c.set_u16(0x2e, ids.subsystem);
        let command = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.set_writable(COMMAND, &command.to_le_bytes());
        // The interrupt line is a scratch register for the OS; the pin stays 0 (no INTx).
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        self.writable[offset..offset + mask.len()].copy_from_slice(mask);
    }

    /// Make the bits set in `mask` of the device-specific registers at `offset` writable by
    /// the guest (a chipset register block). Offsets past the end are ignored.
    pub fn allow_writes(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(w) = offset.checked_add(i).and_then(|o| self.writable.get_mut(o)) {
                *w = *m;
            }
        }
    }

    /// Set the header-type register (bit 7: a multi-function device).
    pub fn set_header_type(&mut self, value: u8) {
        self.regs[0x0e] = value;
    }

    fn set_u16(&mut self, offset: usize, v: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, v: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// An 8-bit register (panics only on an offset the device itself got wrong).
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.regs[offset]
    }

    /// Little-endian 16-bit register (panics only on an offset the device itself got wrong).
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    /// Little-endian 32-bit register.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Set the command register as firmware would have left it.
    pub fn set_command(&mut self, v: u16) {
        self.set_u16(COMMAND, v);
    }

    /// Declare memory BAR `index` and place it at `addr` (which must be aligned to its size).
    pub fn add_bar(&mut self, index: usize, bar: Bar, addr: u64) -> Result<(), ConfigError> {
        let invalid = ConfigError::InvalidBar {
            index,
            size: bar.size,
        };
        let regs = if bar.is_64bit { 2 } else { 1 };
        if index + regs > BAR_COUNT
            || !bar.size.is_power_of_two()
            || bar.size < 16
            || (!bar.is_64bit && bar.size > 1 << 31)
            || !addr.is_multiple_of(bar.size)
            || (!bar.is_64bit && addr > u64::from(u32::MAX))
            || self.taken[index..index + regs].iter().any(|t| *t)
        {
            return Err(invalid);
        }
        let flags = (u32::from(bar.is_64bit) << 2) | (u32::from(bar.prefetchable) << 3);
        let mask = !(bar.size - 1);
        let off = BAR0 + index * 4;
        self.set_u32(off, (addr as u32 & 0xffff_fff0) | flags);
        self.set_writable(off, &((mask as u32) & 0xffff_fff0).to_le_bytes());
        if bar.is_64bit {
            self.set_u32(off + 4, (addr >> 32) as u32);
            self.set_writable(off + 4, &((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(bar);
        self.taken[index..index + regs].fill(true);
        Ok(())
    }

    /// Where BAR `index` currently is, or `None` when it is not declared.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let off = BAR0 + index * 4;
        let low = u64::from(self.read_u32(off) & 0xffff_fff0);
        let high = if bar.is_64bit {
            u64::from(self.read_u32(off + 4)) << 32
        } else {
            0
        };
        Some(high | low)
    }

    /// The memory range BAR `index` decodes right now: `None` while memory decoding is off,
    /// the BAR is unset, or it is mid-sizing and points past the end of the address space.
    pub fn decoded_bar(&self, index: usize) -> Option<(u64, u64)> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let size = self.bars.get(index).copied().flatten()?.size;
        let addr = self.bar_address(index)?;
        (addr != 0 && addr.checked_add(size).is_some()).then_some((addr, size))
    }

    /// All BARs and their declared shapes.
    pub fn bars(&self) -> &[Option<Bar>; BAR_COUNT] {
        &self.bars
    }

    /// Append a capability: `body` starts with the capability ID, then a placeholder for the
    /// next pointer. `writable` has the same length and gives the guest-writable bits.
    /// Returns the capability's offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Result<usize, ConfigError> {
        let at = self.next_capability;
        let end = at + body.len();
        if body.len() < 2 || writable.len() != body.len() || end > CAPABILITIES_END {
            return Err(ConfigError::CapabilitiesFull);
        }
        self.regs[at..end].copy_from_slice(body);
        self.regs[at + 1] = 0;
        self.writable[at..end].copy_from_slice(writable);
        // The list links are never writable.
        self.writable[at + 1] = 0;
        match self.last_capability {
            Some(prev) => self.regs[prev + 1] = at as u8,
            None => {
                self.regs[CAPABILITIES_POINTER] = at as u8;
                let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(at);
        // Capabilities are dword aligned.
        self.next_capability = (end + 3) & !3;
        Ok(at)
    }

    /// Read `data.len()` bytes at `offset`; bytes past the end read as zero (never a panic).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Write through the mask; bytes past the end are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let mask = self.writable[o];
            self.regs[o] = (self.regs[o] & !mask) | (v & mask);
        }
    }

    /// Direct access for device-owned capability state (e.g. the MSI-X control word).
    pub fn raw_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        self.regs.get_mut(offset..offset.checked_add(len)?)
    }

    /// Whether a write of `len` bytes at `offset` touches the command register or a BAR, i.e.
    /// may change what the function decodes.
    pub fn write_affects_decoding(offset: usize, len: usize) -> bool {
        let end = offset.saturating_add(len);
        let touches = |start: usize, stop: usize| offset < stop && start < end;
        touches(COMMAND, COMMAND + 2) || touches(BAR0, BAR0 + 4 * BAR_COUNT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    fn read32(c: &PciConfig, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = PciConfig::new(ids());
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        c.write(0, &[0; 4]);
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert_eq!(read32(&c, 8), 0x0100_0001);
        // No interrupt pin, but the line register is scratch space.
        c.write(0x3c, &[0x0b, 0x01]);
        assert_eq!(read32(&c, 0x3c) & 0xffff, 0x000b);
    }

    #[test]
    fn bar_sizing_and_relocation() {
        let mut c = PciConfig::new(ids());
        let bar = Bar {
            size: 0x8000,
            is_64bit: false,
            prefetchable: false,
        };
        c.add_bar(0, bar, 0xc000_0000).unwrap();
        assert_eq!(c.decoded_bar(0), None, "decoding starts off");
        c.set_command(COMMAND_MEMORY);
        assert_eq!(c.decoded_bar(0), Some((0xc000_0000, 0x8000)));
        // Linux turns decoding off, writes ones, reads the size mask, restores.
        c.write(COMMAND, &0u16.to_le_bytes());
        assert_eq!(c.decoded_bar(0), None);
        c.write(0x10, &[0xff; 4]);
        assert_eq!(read32(&c, 0x10), 0xffff_8000);
        c.write(0x10, &0xd000_8000u32.to_le_bytes());
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.decoded_bar(0), Some((0xd000_8000, 0x8000)));
        // Unused BARs read as zero and stay zero.
        c.write(0x14, &[0xff; 4]);
        assert_eq!(read32(&c, 0x14), 0);
        assert!(PciConfig::write_affects_decoding(0x12, 2));
        assert!(!PciConfig::write_affects_decoding(0x40, 4));
    }

    #[test]
    fn sixty_four_bit_bar() {
        let mut c = PciConfig::new(ids());
        let bar = Bar {
            size: 0x4000,
            is_64bit: true,
            prefetchable: true,
        };
        c.add_bar(2, bar, 0x1_0000_0000).unwrap();
        c.set_command(COMMAND_MEMORY);
        assert_eq!(c.decoded_bar(2), Some((0x1_0000_0000, 0x4000)));
        assert_eq!(read32(&c, 0x18), 0b1100);
        assert_eq!(read32(&c, 0x1c), 1);
        c.write(0x18, &[0xff; 4]);
        c.write(0x1c, &[0xff; 4]);
        assert_eq!(read32(&c, 0x18), 0xffff_c00c);
        assert_eq!(read32(&c, 0x1c), 0xffff_ffff);
        // Mid-sizing, the BAR points at the top of the address space: nothing is decoded.
        assert_eq!(c.decoded_bar(2), None);
        assert!(c.add_bar(3, bar, 0).is_err());
        assert!(c.add_bar(5, bar, 0).is_err());
    }

    #[test]
    fn capability_list_is_linked_and_bounded() {
        let mut c = PciConfig::new(ids());
        let a = c
            .add_capability(&[0x11, 0xee, 1, 2], &[0, 0, 0xff, 0])
            .unwrap();
        let b = c.add_capability(&[0x09, 0, 3, 4, 5], &[0; 5]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_eq!(
            c.read_u16(STATUS) & STATUS_CAPABILITIES,
            STATUS_CAPABILITIES
        );
        let mut p = [0u8; 1];
        c.read(CAPABILITIES_POINTER, &mut p);
        assert_eq!(p[0], 0x40);
        c.read(0x41, &mut p);
        assert_eq!(p[0], 0x44);
        c.write(0x41, &[0]);
        c.write(0x42, &[9, 9]);
        let mut v = [0u8; 3];
        c.read(0x41, &mut v);
        assert_eq!(v, [0x44, 9, 2]);
        assert_eq!(
            c.add_capability(&[0; 200], &[0; 200]),
            Err(ConfigError::CapabilitiesFull)
        );
        // Accesses at the very end neither panic nor wrap.
        let mut d = [0u8; 4];
        c.read(CONFIG_SPACE_SIZE - 2, &mut d);
        c.write(CONFIG_SPACE_SIZE - 2, &[1, 2, 3, 4]);
        c.read(usize::MAX, &mut d);
        c.write(usize::MAX, &[1]);
    }
}
