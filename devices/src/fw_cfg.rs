//! QEMU's firmware configuration interface (fw_cfg) on I/O ports 0x510..0x51c, the way OVMF,
//! SeaBIOS and Linux's `qemu_fw_cfg` driver use it.
//!
//! The VMM fills in numbered items (CPU count, kernel, initrd, command line...) and named files
//! (`etc/e820`, `etc/table-loader`, `bootorder`...). The guest selects an item with a 16-bit
//! write to the selector port and reads it a byte at a time from the data port, or hands the
//! device a DMA descriptor in guest memory. Layout of the ports (offsets from
//! [`FW_CFG_PORT`]):
//!
//! | offset | access | meaning |
//! | --- | --- | --- |
//! | 0 | 16-bit write | selector (little-endian); resets the read offset to 0 |
//! | 0, 1 | 8-bit read | next byte of the selected item (0 past its end) |
//! | 4 | 32-bit write | high half of the DMA descriptor address (big-endian) |
//! | 8 | 32-bit write | low half of the address (big-endian); runs the transfer |
//! | 4 | 64-bit write | the whole address (big-endian); runs the transfer |
//! | 4..12 | read | the DMA signature `"QEMU CFG"` |
//!
//! A DMA descriptor is `{BE32 control, BE32 length, BE64 address}`. The device selects (if asked),
//! then reads, skips or writes `length` bytes of the item at `address`, and stores the outcome in
//! the descriptor's control field: 0 on success, [`CTL_ERROR`] otherwise. Transfers run on the
//! vCPU thread that made the port write; their cost is bounded by the item's size plus a zero
//! fill of at most `length` bytes of guest memory, and nothing the guest supplies is used as an
//! allocation size.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::BusDevice;
use crate::virtio::GuestMemoryMmap;

/// First I/O port of the device (the selector).
pub const FW_CFG_PORT: u64 = 0x510;
/// Number of I/O ports covered: selector, data, and the 8-byte DMA address register at +4.
pub const FW_CFG_PORTS: u64 = 12;

/// Item 0x00: the signature `"QEMU"`.
pub const KEY_SIGNATURE: u16 = 0x00;
/// Item 0x01: interface ID, LE32 feature bits ([`ID_TRADITIONAL`] | [`ID_DMA`]).
pub const KEY_ID: u16 = 0x01;
/// Item 0x05: number of boot CPUs (LE16).
pub const KEY_NB_CPUS: u16 = 0x05;
/// Item 0x07: load address of the kernel (LE32).
pub const KEY_KERNEL_ADDR: u16 = 0x07;
/// Item 0x08: size of the kernel (LE32).
pub const KEY_KERNEL_SIZE: u16 = 0x08;
/// Item 0x0a: load address of the initrd (LE32).
pub const KEY_INITRD_ADDR: u16 = 0x0a;
/// Item 0x0b: size of the initrd (LE32).
pub const KEY_INITRD_SIZE: u16 = 0x0b;
/// Item 0x0e: whether to show the boot menu (LE16).
pub const KEY_BOOT_MENU: u16 = 0x0e;
/// Item 0x11: the kernel image (without the setup part).
pub const KEY_KERNEL_DATA: u16 = 0x11;
/// Item 0x12: the initrd.
pub const KEY_INITRD_DATA: u16 = 0x12;
/// Item 0x13: load address of the command line (LE32).
pub const KEY_CMDLINE_ADDR: u16 = 0x13;
/// Item 0x14: size of the command line including its NUL (LE32).
pub const KEY_CMDLINE_SIZE: u16 = 0x14;
/// Item 0x15: the command line, NUL-terminated.
pub const KEY_CMDLINE_DATA: u16 = 0x15;
/// Item 0x16: load address of the bzImage setup part (LE32).
pub const KEY_SETUP_ADDR: u16 = 0x16;
/// Item 0x17: size of the setup part (LE32).
pub const KEY_SETUP_SIZE: u16 = 0x17;
/// Item 0x18: the setup part.
pub const KEY_SETUP_DATA: u16 = 0x18;
/// Item 0x19: the file directory, maintained by [`FwCfg::add_file`].
pub const KEY_FILE_DIR: u16 = 0x19;
/// The first selector given to files.
pub const KEY_FILE_FIRST: u16 = 0x20;

/// Longest file name, in bytes (the directory has 56 bytes for it, NUL included).
pub const FILE_NAME_MAX: usize = 55;

/// ID bit 0: the port interface.
pub const ID_TRADITIONAL: u32 = 1;
/// ID bit 1: the DMA interface.
pub const ID_DMA: u32 = 2;
/// What reads of the DMA address register return (big-endian `"QEMU CFG"`).
pub const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

/// DMA control: the transfer failed (written back by the device).
pub const CTL_ERROR: u32 = 0x01;
/// DMA control: copy item bytes into guest memory.
pub const CTL_READ: u32 = 0x02;
/// DMA control: advance the item offset without copying.
pub const CTL_SKIP: u32 = 0x04;
/// DMA control: select the item in the high 16 bits first.
pub const CTL_SELECT: u32 = 0x08;
/// DMA control: copy guest memory into a writable item.
pub const CTL_WRITE: u32 = 0x10;

/// Port offsets inside the device's range.
const PORT_SELECTOR: u64 = 0;
const PORT_DATA: u64 = 1;
const PORT_DMA_HIGH: u64 = 4;
const PORT_DMA_LOW: u64 = 8;

/// The "write channel" selector bit of the original interface; it has no effect on which item
/// is selected.
const SELECTOR_WRITE_CHANNEL: u16 = 0x4000;
/// File selectors stay below the write-channel bit.
const FILE_SELECTOR_END: u16 = 0x4000;
/// Bytes per directory entry: size, select, reserved, name.
const DIR_ENTRY_LEN: usize = 4 + 2 + 2 + FILE_NAME_MAX + 1;
/// Zero fill of guest memory goes in pieces of this size.
const ZERO_CHUNK: usize = 4096;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// Errors from adding a file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, longer than [`FILE_NAME_MAX`] bytes, or contains a NUL byte.
    #[error("Invalid fw_cfg file name {0:?}: it must be 1 to 55 bytes without NUL")]
    BadName(String),
    /// A file of that name exists already.
    #[error("Duplicate fw_cfg file name {0:?}")]
    Duplicate(String),
    /// Every file selector is taken.
    #[error("No free fw_cfg selector for file {0:?}")]
    NoSelector(String),
    /// The directory records sizes in 32 bits.
    #[error("fw_cfg file {0:?} is larger than 4 GiB")]
    TooLarge(String),
}

impl FwCfgError {
    /// The errno that describes this error (the process exit code).
    pub fn errno(&self) -> i32 {
        match self {
            FwCfgError::BadName(_) => libc::EINVAL,
            FwCfgError::Duplicate(_) => libc::EEXIST,
            FwCfgError::NoSelector(_) => libc::ENOSPC,
            FwCfgError::TooLarge(_) => libc::EFBIG,
        }
    }
}

struct Item {
    /// Shared, so that a large item (a kernel) can be handed over without a copy; a writable
    /// item's `Arc` is never shared, so DMA writes get it mutably.
    data: Arc<[u8]>,
    /// Whether DMA writes may change it (within its current size).
    writable: bool,
}

/// The fw_cfg device: its items, the guest's current selection and the DMA address register.
pub struct FwCfg {
    mem: GuestMemoryMmap,
    items: BTreeMap<u16, Item>,
    /// Files in the order they were added, with their selectors.
    files: Vec<(String, u16)>,
    /// Selected key (write-channel bit removed).
    selector: u16,
    /// Offset of the next byte to read in the selected item.
    offset: usize,
    /// DMA address register, assembled from the two 32-bit halves.
    dma_address: u64,
    /// The SMI feature negotiation, when the machine has SMM.
    smi: Option<SmiNegotiation>,
}

/// QEMU's ICH9 SMI feature bits: SMIs go to every CPU.
pub const SMI_F_BROADCAST: u64 = 1;

/// The SMI feature negotiation (QEMU's `etc/smi/*` files, as OVMF's `SmmControl2Dxe` drives
/// it): the firmware reads `supported-features`, writes the subset it wants to
/// `requested-features`, then selects `features-ok`, which validates the request and, if it
/// is a subset, locks it in until reset and reads 1.
struct SmiNegotiation {
    supported: u64,
    requested: u16,
    ok: u16,
    /// Set when broadcast SMIs were negotiated.
    broadcast: Arc<AtomicBool>,
    done: bool,
}

impl fmt::Debug for FwCfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FwCfg")
            .field(
                "items",
                &self
                    .items
                    .iter()
                    .map(|(k, i)| (*k, i.data.len()))
                    .collect::<Vec<_>>(),
            )
            .field("files", &self.files)
            .field("selector", &self.selector)
            .field("offset", &self.offset)
            .finish()
    }
}

impl FwCfg {
    /// A device with the signature, the ID (port and DMA interfaces) and an empty file
    /// directory; DMA transfers go to `mem`.
    pub fn new(mem: GuestMemoryMmap) -> FwCfg {
        let mut fw = FwCfg {
            mem,
            items: BTreeMap::new(),
            files: Vec::new(),
            selector: KEY_SIGNATURE,
            offset: 0,
            dma_address: 0,
            smi: None,
        };
        fw.add_item(KEY_SIGNATURE, b"QEMU".to_vec());
        fw.add_item(KEY_ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        fw.rebuild_directory();
        fw
    }

    /// Add or replace the numbered item `key` (read-only to the guest). Keys 0x00, 0x01 and
    /// 0x19 and the selectors of files belong to the device: the directory is regenerated
    /// right away (so replacing it has no effect), and replacing a file's selector replaces that
    /// file's contents (its directory size follows).
    pub fn add_item(&mut self, key: u16, data: impl Into<Arc<[u8]>>) {
        self.items.insert(
            key & !SELECTOR_WRITE_CHANNEL,
            Item {
                data: data.into(),
                writable: false,
            },
        );
        self.rebuild_directory();
    }

    /// Add the read-only file `name`; returns its selector (the lowest free one from
    /// [`KEY_FILE_FIRST`] up). The directory lists files sorted by name.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        self.insert_file(name, data, false)
    }

    /// Add a file that the guest may overwrite by DMA, within its current size (QEMU uses these
    /// for e.g. WRITE_POINTER targets); the VMM reads it back with [`FwCfg::item`].
    pub fn add_writable_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        self.insert_file(name, data, true)
    }

    /// Offer SMI features `supported` (LE64) through QEMU's three `etc/smi/` files; once the
    /// firmware has negotiated broadcast SMIs, `broadcast` is set.
    pub fn add_smi_negotiation(
        &mut self,
        supported: u64,
        broadcast: Arc<AtomicBool>,
    ) -> Result<(), FwCfgError> {
        self.add_file(
            "etc/smi/supported-features",
            supported.to_le_bytes().to_vec(),
        )?;
        let requested = self.add_writable_file("etc/smi/requested-features", vec![0; 8])?;
        let ok = self.add_file("etc/smi/features-ok", vec![0])?;
        self.smi = Some(SmiNegotiation {
            supported,
            requested,
            ok,
            broadcast,
            done: false,
        });
        Ok(())
    }

    /// Selecting `features-ok` validates the requested SMI features (once: after success the
    /// choice holds until reset, as in QEMU).
    fn negotiate_smi(&mut self) {
        let Some(neg) = &mut self.smi else {
            return;
        };
        if neg.done || self.selector != neg.ok {
            return;
        }
        let Some(requested) = self
            .items
            .get(&neg.requested)
            .and_then(|i| <[u8; 8]>::try_from(&i.data[..]).ok())
            .map(u64::from_le_bytes)
        else {
            return;
        };
        if requested & !neg.supported != 0 {
            return;
        }
        neg.done = true;
        neg.broadcast
            .store(requested & SMI_F_BROADCAST != 0, Ordering::Release);
        if let Some(item) = self.items.get_mut(&neg.ok) {
            item.data = Arc::from(&[1u8][..]);
        }
    }

    /// The current contents of item `key`, if there is one.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items
            .get(&(key & !SELECTOR_WRITE_CHANNEL))
            .map(|i| &i.data[..])
    }

    /// How many items there are (signature, ID and directory included).
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    fn insert_file(
        &mut self,
        name: &str,
        data: Vec<u8>,
        writable: bool,
    ) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > FILE_NAME_MAX || name.contains('\0') {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(name.to_string()));
        }
        let key = (KEY_FILE_FIRST..FILE_SELECTOR_END)
            .find(|k| !self.items.contains_key(k))
            .ok_or_else(|| FwCfgError::NoSelector(name.to_string()))?;
        self.items.insert(
            key,
            Item {
                data: data.into(),
                writable,
            },
        );
        self.files.push((name.to_string(), key));
        self.rebuild_directory();
        Ok(key)
    }

    /// Regenerate item 0x19: BE32 count, then per file (sorted by name) BE32 size, BE16
    /// selector, BE16 reserved and the NUL-padded name.
    fn rebuild_directory(&mut self) {
        let mut files: Vec<&(String, u16)> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut dir = Vec::with_capacity(4 + files.len() * DIR_ENTRY_LEN);
        dir.extend_from_slice(&(files.len() as u32).to_be_bytes());
        for (name, key) in files {
            let size = self.items.get(key).map_or(0, |i| i.data.len());
            dir.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; FILE_NAME_MAX + 1];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
        }
        self.items.insert(
            KEY_FILE_DIR,
            Item {
                data: dir.into(),
                writable: false,
            },
        );
    }

    fn select(&mut self, key: u16) {
        self.selector = key & !SELECTOR_WRITE_CHANNEL;
        self.offset = 0;
        self.negotiate_smi();
    }

    /// The unread rest of the selected item (empty if none is selected or it is all read).
    fn remaining(&self) -> &[u8] {
        self.items
            .get(&self.selector)
            .and_then(|i| i.data.get(self.offset..))
            .unwrap_or(&[])
    }

    fn next_byte(&mut self) -> u8 {
        match self.remaining().first() {
            Some(&b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// Run the DMA descriptor at guest address `at`.
    fn dma(&mut self, at: u64) {
        let at = GuestAddress(at);
        let mut raw = [0u8; 16];
        if self.mem.read_slice(&mut raw, at).is_err() {
            // Report the failure where the guest polls, if that part is reachable at all.
            let _ = self.mem.write_slice(&CTL_ERROR.to_be_bytes(), at);
            return;
        }
        let control = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let mut address = [0u8; 8];
        address.copy_from_slice(&raw[8..]);
        let address = u64::from_be_bytes(address);

        if control & CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & CTL_READ != 0 {
            self.dma_read(address, length)
        } else if control & CTL_WRITE != 0 {
            self.dma_write(address, length)
        } else if control & CTL_SKIP != 0 {
            self.offset += self.remaining().len().min(length);
            true
        } else {
            true
        };
        let status = if ok { 0 } else { CTL_ERROR };
        let _ = self.mem.write_slice(&status.to_be_bytes(), at);
    }

    /// Copy up to `length` bytes of the item to `address`, then zeroes for the rest.
    fn dma_read(&mut self, address: u64, length: usize) -> bool {
        if address.checked_add(length as u64).is_none() {
            return false;
        }
        let rest = self.remaining();
        let n = rest.len().min(length);
        if n > 0
            && self
                .mem
                .write_slice(&rest[..n], GuestAddress(address))
                .is_err()
        {
            return false;
        }
        self.offset += n;
        // `address + length` does not overflow, so neither does `address + n`.
        zero_fill(&self.mem, address + n as u64, length - n)
    }

    /// Copy `length` bytes at `address` into a writable item; all of it must fit.
    fn dma_write(&mut self, address: u64, length: usize) -> bool {
        if length == 0 {
            return true;
        }
        let Some(item) = self.items.get_mut(&self.selector) else {
            return false;
        };
        let Some(end) = self
            .offset
            .checked_add(length)
            .filter(|&end| item.writable && end <= item.data.len())
        else {
            return false;
        };
        let Some(data) = Arc::get_mut(&mut item.data) else {
            return false;
        };
        if self
            .mem
            .read_slice(&mut data[self.offset..end], GuestAddress(address))
            .is_err()
        {
            return false;
        }
        self.offset = end;
        true
    }
}

/// Zero `len` bytes of guest memory at `address`, or nothing if the range is not all memory.
fn zero_fill(mem: &GuestMemoryMmap, address: u64, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    if !mem.check_range(GuestAddress(address), len) {
        return false;
    }
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK);
        if mem
            .write_slice(&ZEROES[..n], GuestAddress(address + done as u64))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    true
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // The selector and data ports share one register for reads, as in QEMU.
            PORT_SELECTOR | PORT_DATA => {
                for b in data.iter_mut() {
                    *b = self.next_byte();
                }
            }
            PORT_DMA_HIGH..FW_CFG_PORTS => {
                let signature = DMA_SIGNATURE.to_be_bytes();
                let start = (offset - PORT_DMA_HIGH) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = signature.get(start + i).copied().unwrap_or(0xff);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (PORT_SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (PORT_DMA_HIGH, 4) => {
                let high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                self.dma_address = u64::from(high) << 32;
            }
            (PORT_DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let at = self.dma_address | u64::from(low);
                self.dma_address = 0;
                self.dma(at);
            }
            (PORT_DMA_HIGH, 8) => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(data);
                self.dma_address = 0;
                self.dma(u64::from_be_bytes(raw));
            }
            // Data port writes (ignored by QEMU since 2.4) and anything else.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
