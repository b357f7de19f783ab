//! PCI: one root bus with a host bridge, configuration access through ports 0xCF8/0xCFC and
//! through ECAM, and dispatch of BAR accesses to whichever function decodes the address.
//!
//! The bus is built before the vCPUs start and its device list never changes; what changes is
//! where BARs are, so the BAR map is behind a read-write lock that only config writes to a
//! command register or BAR take for writing.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex, RwLock};

pub use config::{Bar, PciConfig, PciIds};
pub use msix::{MsiMessage, MsiRouter, MsiVector, Msix};

use crate::BusDevice;

/// Devices on the root bus (device numbers 0..32; 0 is the host bridge).
pub const MAX_DEVICES: usize = 32;
/// Size of the ECAM region for bus 0: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BUS0_SIZE: u64 = 1 << 20;
/// I/O port of CONFIG_ADDRESS; CONFIG_DATA follows at +4.
pub const CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports taken by the two registers.
pub const CONFIG_IO_PORTS: u64 = 8;

/// A PCI function as the bus sees it.
pub trait PciDevice: Send {
    /// Configuration space read (`offset` < 4096).
    fn read_config(&mut self, offset: usize, data: &mut [u8]);
    /// Configuration space write.
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// The configuration space, to learn where BARs are decoded.
    fn config(&self) -> &PciConfig;
    /// Read at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Write at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// Errors from building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// All 31 device numbers are taken.
    #[error("no free PCI slot (at most {} devices)", MAX_DEVICES - 1)]
    NoSlot,
    /// The BAR allocator ran out of space.
    #[error("no room for a {0:#x}-byte BAR in the PCI memory window")]
    NoBarSpace(u64),
    /// A configuration-space error.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// The host bridge at 00.0: identity only.
struct HostBridge(PciConfig);

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    base: u64,
    len: u64,
    slot: usize,
    bar: usize,
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

/// The root bus.
pub struct PciBus {
    /// Indexed by device number; `None` is an empty slot.
    slots: Vec<Option<SharedDevice>>,
    bars: RwLock<Vec<Mapping>>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("devices", &self.slots.iter().flatten().count())
            .finish_non_exhaustive()
    }
}

fn lock(d: &Mutex<dyn PciDevice>) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus holding just a generic host bridge (the direct-boot platform).
    pub fn new() -> Self {
        // A generic host bridge ID with no quirks attached to it in guest kernels.
        let bridge = PciConfig::new(PciIds {
            vendor: 0x1b36,
            device: 0x0008,
            revision: 0,
            class: 0x06_00_00,
            subsystem_vendor: 0x1b36,
            subsystem: 0x0008,
        });
        Self::with_host_bridge(Arc::new(Mutex::new(HostBridge(bridge))))
    }

    /// A bus whose device 0 is `bridge` (a chipset's own host bridge).
    pub fn with_host_bridge(bridge: SharedDevice) -> Self {
        let mut slots: Vec<Option<SharedDevice>> = vec![None; MAX_DEVICES];
        slots[0] = Some(bridge);
        PciBus {
            slots,
            bars: RwLock::new(Vec::new()),
        }
    }

    /// Plug a device into the lowest free slot; returns its device number.
    pub fn add(&mut self, device: SharedDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        self.add_at(slot as u8, device)
    }

    /// Plug a device in at device number `slot` (a chipset function with a fixed address).
    pub fn add_at(&mut self, slot: u8, device: SharedDevice) -> Result<u8, PciError> {
        match self.slots.get_mut(usize::from(slot)) {
            Some(s @ None) => *s = Some(device),
            _ => return Err(PciError::NoSlot),
        }
        self.remap(usize::from(slot));
        Ok(slot)
    }

    /// Rebuild the BAR map entries of `slot` from its configuration space.
    fn remap(&self, slot: usize) {
        let Some(Some(dev)) = self.slots.get(slot) else {
            return;
        };
        let config_bars: Vec<(usize, u64, u64)> = {
            let dev = lock(dev);
            let c = dev.config();
            (0..config::BAR_COUNT)
                .filter_map(|i| c.decoded_bar(i).map(|(a, l)| (i, a, l)))
                .collect()
        };
        let mut map = self.bars.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|m| m.slot != slot);
        for (bar, base, len) in config_bars {
            // A guest may program overlapping BARs; the first mapping wins, as on real
            // hardware the result is undefined anyway.
            map.push(Mapping {
                base,
                len,
                slot,
                bar,
            });
        }
    }

    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Configuration read of bus/device/function at `offset`; absent functions read as ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.device(bus, dev, func) {
            Some(d) => lock(d).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write; writes to absent functions are dropped.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        let Some(d) = self.device(bus, dev, func) else {
            return;
        };
        lock(d).write_config(offset, data);
        if PciConfig::write_affects_decoding(offset, data.len()) {
            self.remap(usize::from(dev));
        }
    }

    fn find_bar(&self, addr: u64, len: usize) -> Option<(Mapping, u64)> {
        let map = self.bars.read().unwrap_or_else(|p| p.into_inner());
        map.iter().find_map(|m| {
            let off = addr.checked_sub(m.base)?;
            (off.checked_add(len as u64)? <= m.len).then_some((*m, off))
        })
    }

    /// A memory read that may hit a BAR; returns false when no BAR decodes it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(addr, data.len()) {
            Some((m, off)) => {
                match &self.slots[m.slot] {
                    Some(d) => lock(d).read_bar(m.bar, off, data),
                    None => data.fill(0xff),
                }
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A memory write that may hit a BAR.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find_bar(addr, data.len()) {
            Some((m, off)) => {
                if let Some(d) = &self.slots[m.slot] {
                    lock(d).write_bar(m.bar, off, data);
                }
                true
            }
            None => false,
        }
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC.
#[derive(Debug)]
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    /// Serve `bus` through the two I/O registers.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    /// Decode CONFIG_ADDRESS, if enabled, plus the byte offset inside the data register.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let reg = (a & 0xfc) as usize + data_offset as usize;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            reg,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            // Only whole-dword accesses reach CONFIG_ADDRESS; byte accesses at 0xCF8-0xCFB
            // belong to other (legacy) mechanisms and read as ones.
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        match self.target(offset - 4) {
            Some((b, d, f, reg)) if reg + data.len() <= 0x100 => {
                self.bus.config_read(b, d, f, reg, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b);
            }
            return;
        }
        if let Some((b, d, f, reg)) = self.target(offset - 4)
            && reg + data.len() <= 0x100
        {
            self.bus.config_write(b, d, f, reg, data);
        }
    }
}

/// ECAM: each function's 4 KiB configuration space, memory-mapped.
#[derive(Debug)]
pub struct PciEcam {
    bus: Arc<PciBus>,
}

impl PciEcam {
    /// Serve `bus` through its ECAM window.
    pub fn new(bus: Arc<PciBus>) -> Self {
        PciEcam { bus }
    }
}

fn ecam_target(offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
    let reg = (offset & 0xfff) as usize;
    // An access must stay inside one function's space.
    (reg + len <= config::CONFIG_SPACE_SIZE).then_some((
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        reg,
    ))
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match ecam_target(offset, data.len()) {
            Some((b, d, f, reg)) => self.bus.config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = ecam_target(offset, data.len()) {
            self.bus.config_write(b, d, f, reg, data);
        }
    }
}

/// The PCI memory window: accesses land on whichever BAR decodes them.
#[derive(Debug)]
pub struct PciMmioWindow {
    bus: Arc<PciBus>,
    base: u64,
}

impl PciMmioWindow {
    /// A window starting at guest address `base`.
    pub fn new(bus: Arc<PciBus>, base: u64) -> Self {
        PciMmioWindow { bus, base }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.bus.mmio_read(self.base + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.bus.mmio_write(self.base + offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy {
        config: PciConfig,
        writes: Vec<(usize, u64, Vec<u8>)>,
    }

    impl PciDevice for Dummy {
        fn read_config(&mut self, offset: usize, data: &mut [u8]) {
            self.config.read(offset, data)
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data)
        }
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
    }

    fn bus_with_dummy() -> (Arc<PciBus>, Arc<Mutex<Dummy>>) {
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        config
            .add_bar(
                0,
                Bar {
                    size: 0x1000,
                    is_64bit: false,
                    prefetchable: false,
                },
                0xc000_0000,
            )
            .unwrap();
        config.set_command(config::COMMAND_MEMORY);
        let dummy = Arc::new(Mutex::new(Dummy {
            config,
            writes: vec![],
        }));
        let mut bus = PciBus::new();
        assert_eq!(bus.add(dummy.clone()).unwrap(), 1);
        (Arc::new(bus), dummy)
    }

    fn io_read32(io: &mut PciConfigIo, dev: u32, reg: u32) -> u32 {
        io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn config_io_and_ecam_see_the_same_functions() {
        let (bus, _) = bus_with_dummy();
        let mut io = PciConfigIo::new(bus.clone());
        assert_eq!(io_read32(&mut io, 0, 0), 0x0008_1b36);
        assert_eq!(io_read32(&mut io, 1, 0), 0x1044_1af4);
        assert_eq!(io_read32(&mut io, 2, 0), 0xffff_ffff);
        // Function 1 of a present device, and another bus, are absent.
        io.write(0, &(0x8000_0000u32 | 1 << 11 | 1 << 8).to_le_bytes());
        let mut d = [0u8; 2];
        io.read(4, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        // Byte access at 0xCFE reads the upper half of the device ID register.
        io.write(0, &(0x8000_0000u32 | 1 << 11).to_le_bytes());
        let mut b = [0u8; 2];
        io.read(6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x1044);
        // Disabled CONFIG_ADDRESS reads ones.
        io.write(0, &(1u32 << 11).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        let mut ecam = PciEcam::new(bus.clone());
        let mut d = [0u8; 4];
        ecam.read(1 << 15, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1044_1af4);
        ecam.read((1 << 15) + 0xffe, &mut d);
        assert_eq!(d, [0xff; 4]);
        ecam.read(1 << 20, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn bar_accesses_follow_relocation() {
        let (bus, dummy) = bus_with_dummy();
        let mut window = PciMmioWindow::new(bus.clone(), 0xc000_0000);
        let mut d = [0u8; 1];
        window.read(0x5, &mut d);
        assert_eq!(d, [0x05]);
        // Move the BAR through ECAM: decoding off, new address, decoding on.
        let mut ecam = PciEcam::new(bus.clone());
        let base = 1u64 << 15;
        ecam.write(base + 4, &0u16.to_le_bytes());
        assert!(!bus.mmio_read(0xc000_0005, &mut d));
        ecam.write(base + 0x10, &0xc010_0000u32.to_le_bytes());
        ecam.write(base + 4, &2u16.to_le_bytes());
        assert!(!bus.mmio_write(0xc000_0005, &[1]));
        window.write(0x10_0008, &[7, 7]);
        assert_eq!(dummy.lock().unwrap().writes, vec![(0, 8, vec![7, 7])]);
        // An access straddling the end of the BAR is not delivered.
        assert!(!bus.mmio_write(0xc010_0fff, &[1, 2]));
    }
}
