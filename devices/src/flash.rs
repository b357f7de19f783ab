//! A CFI01 (Intel command set) parallel NOR flash, the subset OVMF's QEMU flash driver
//! (`QemuFlashFvbServicesRuntimeDxe`) uses for the UEFI variable store, with QEMU's
//! `pflash_cfi01` behaviour where the two differ from real parts.
//!
//! The bytes live in memory the VMM owns (a [`FlashBacking`], normally the mapped variable-store
//! file), which the VMM also maps into the guest read-only while the flash is in read-array mode,
//! so that guest reads then never exit. Any write exits to this device. The first command that
//! leaves read-array mode calls [`RomMode::set_read_array`]`(false)`: the VMM then removes the
//! mapping so that reads exit too and see status; returning to read-array mode calls it with
//! `true`. The device starts in read-array mode (the VMM maps the store before the guest runs).
//!
//! Commands (the low byte of a write; x86 OVMF only writes bytes):
//!
//! | byte | effect |
//! | --- | --- |
//! | 0xFF, 0x00 | read array |
//! | 0x10, 0x40 | program: the next write stores its bytes at its offset (as written, not AND-ed), then read status |
//! | 0x20, then 0xD0 | erase the block holding the 0xD0's offset to 0xFF, then read status; any other second byte sets the command-sequence error bits |
//! | 0x50 | clear the status register (to 0, ready bit included) and read array |
//! | 0x70 | read status |
//! | 0x90, 0x98 | read identifier / CFI query: this model has no identification, reads return 0 |
//! | anything else | read array |
//!
//! In the status modes every byte of a read returns the status register (0x80 = ready, plus
//! error bits); after a program or an erase the device stays there until 0xFF, as QEMU does.
//! OVMF's detection relies on a status read right after 0x50 returning 0.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::BusDevice;

/// Status register: the write state machine is ready.
pub const STATUS_READY: u8 = 0x80;
/// Status register: an erase failed (or a command sequence error, with [`STATUS_PROGRAM_ERROR`]).
pub const STATUS_ERASE_ERROR: u8 = 0x20;
/// Status register: a program failed (or a command sequence error, with [`STATUS_ERASE_ERROR`]).
pub const STATUS_PROGRAM_ERROR: u8 = 0x10;

const CMD_READ_ARRAY: u8 = 0xff;
const CMD_READ_ARRAY_ALT: u8 = 0x00;
const CMD_PROGRAM: u8 = 0x10;
const CMD_PROGRAM_ALT: u8 = 0x40;
const CMD_ERASE_SETUP: u8 = 0x20;
const CMD_ERASE_CONFIRM: u8 = 0xd0;
const CMD_CLEAR_STATUS: u8 = 0x50;
const CMD_READ_STATUS: u8 = 0x70;
const CMD_READ_ID: u8 = 0x90;
const CMD_CFI_QUERY: u8 = 0x98;

/// Erases write 0xFF in pieces of this size.
const ERASE_CHUNK: usize = 4096;
static ERASED: [u8; ERASE_CHUNK] = [0xff; ERASE_CHUNK];

/// The flash contents. The device only calls `read` and `write` with ranges inside
/// `[0, len())`.
pub trait FlashBacking: Send {
    /// Size of the flash in bytes.
    fn len(&self) -> u64;
    /// Whether the flash has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy the bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: &mut [u8]);
    /// Store `data` at `offset` (and persist it, for a file-backed store).
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Told whenever the device switches between read-array mode (guest reads may be served from a
/// read-only mapping of the backing) and command mode (every access must reach the device).
pub trait RomMode: Send {
    /// `true` on entering read-array mode, `false` on leaving it; never called twice in a row
    /// with the same value.
    fn set_read_array(&mut self, read_array: bool);
}

/// A [`FlashBacking`] in a shared vector, for tests and fuzzing: clones see the same bytes.
#[derive(Debug, Clone, Default)]
pub struct VecBacking(Arc<Mutex<Vec<u8>>>);

impl VecBacking {
    /// A backing holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        VecBacking(Arc::new(Mutex::new(bytes)))
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FlashBacking for VecBacking {
    fn len(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        let bytes = self.lock();
        buf.fill(0xff);
        if let Some(src) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) {
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = self.lock();
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get_mut(o..))
        {
            let n = dst.len().min(data.len());
            dst[..n].copy_from_slice(&data[..n]);
        }
    }
}

/// A [`RomMode`] that does nothing, for a flash whose reads always reach the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRomMode;

impl RomMode for NoRomMode {
    fn set_read_array(&mut self, _read_array: bool) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reads return the contents.
    ReadArray,
    /// Reads return the status register.
    Status,
    /// 0x10/0x40 seen: the next write is data.
    ProgramSetup,
    /// 0x20 seen: the next write should be 0xD0.
    EraseSetup,
    /// 0x90/0x98: reads return 0.
    Identify,
}

/// The flash device, covering the whole flash range on the MMIO bus.
pub struct Cfi01Flash {
    backing: Box<dyn FlashBacking>,
    hook: Box<dyn RomMode>,
    len: u64,
    block_size: u64,
    mode: Mode,
    status: u8,
    /// Programmable from SMM only ([`Cfi01Flash::secure`]).
    secure: bool,
}

impl fmt::Debug for Cfi01Flash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cfi01Flash")
            .field("len", &self.len)
            .field("block_size", &self.block_size)
            .field("mode", &self.mode)
            .field("status", &self.status)
            .finish()
    }
}

impl Cfi01Flash {
    /// A flash over `backing` (its length is read once, here) with erase blocks of
    /// `block_size` bytes (4096 for OVMF; 0 is taken as 1), starting in read-array mode with a
    /// ready status. `hook` is not called until the mode changes.
    pub fn new(backing: Box<dyn FlashBacking>, hook: Box<dyn RomMode>, block_size: u64) -> Self {
        let len = backing.len();
        Cfi01Flash {
            backing,
            hook,
            len,
            block_size: block_size.max(1),
            mode: Mode::ReadArray,
            status: STATUS_READY,
            secure: false,
        }
    }

    /// Take commands only from System Management Mode, as QEMU's `cfi.pflash01` with
    /// `secure=on` under a Secure Boot firmware: a write from outside SMM is dropped, and a read
    /// from outside SMM gets the contents whatever mode the SMM code left the flash in. So an
    /// OS can neither change the variable store behind the firmware's back nor see it in the
    /// middle of an update.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Whether this access must be kept from the command state machine.
    fn outsider(&self) -> bool {
        self.secure && !crate::smm::access_from_smm()
    }

    /// Whether guest reads may be served from the read-only mapping of the backing.
    pub fn read_array(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// Machine reset: back to read-array mode (telling the hook if that is a change) with a
    /// ready status.
    pub fn reset(&mut self) {
        self.set_mode(Mode::ReadArray);
        self.status = STATUS_READY;
    }

    fn set_mode(&mut self, mode: Mode) {
        let was = self.mode == Mode::ReadArray;
        let now = mode == Mode::ReadArray;
        self.mode = mode;
        if was != now {
            self.hook.set_read_array(now);
        }
    }

    /// Store `data` at `offset`, dropping whatever lies past the end.
    fn program(&mut self, offset: u64, data: &[u8]) {
        let Some(room) = self.len.checked_sub(offset).filter(|&r| r > 0) else {
            return;
        };
        let n = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
        self.backing.write(offset, &data[..n]);
    }

    /// Fill the block holding `offset` with 0xFF.
    fn erase(&mut self, offset: u64) {
        if offset >= self.len {
            return;
        }
        let start = offset - offset % self.block_size;
        let end = start.saturating_add(self.block_size).min(self.len);
        let mut at = start;
        while at < end {
            let n = (end - at).min(ERASE_CHUNK as u64) as usize;
            self.backing.write(at, &ERASED[..n]);
            at += n as u64;
        }
    }
}

impl BusDevice for Cfi01Flash {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mode = if self.outsider() {
            Mode::ReadArray
        } else {
            self.mode
        };
        match mode {
            Mode::ReadArray => {
                data.fill(0xff);
                let room = self.len.saturating_sub(offset);
                let n = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
                if n > 0 {
                    self.backing.read(offset, &mut data[..n]);
                }
            }
            Mode::Status | Mode::ProgramSetup | Mode::EraseSetup => data.fill(self.status),
            Mode::Identify => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&cmd) = data.first() else {
            return;
        };
        if self.outsider() {
            return;
        }
        match self.mode {
            Mode::ProgramSetup => {
                self.program(offset, data);
                self.status |= STATUS_READY;
                self.set_mode(Mode::Status);
            }
            Mode::EraseSetup => {
                if cmd == CMD_ERASE_CONFIRM {
                    self.erase(offset);
                } else {
                    self.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                }
                self.status |= STATUS_READY;
                self.set_mode(Mode::Status);
            }
            Mode::ReadArray | Mode::Status | Mode::Identify => match cmd {
                CMD_PROGRAM | CMD_PROGRAM_ALT => self.set_mode(Mode::ProgramSetup),
                CMD_ERASE_SETUP => self.set_mode(Mode::EraseSetup),
                CMD_CLEAR_STATUS => {
                    self.status = 0;
                    self.set_mode(Mode::ReadArray);
                }
                CMD_READ_STATUS => self.set_mode(Mode::Status),
                CMD_READ_ID | CMD_CFI_QUERY => self.set_mode(Mode::Identify),
                CMD_READ_ARRAY | CMD_READ_ARRAY_ALT => self.set_mode(Mode::ReadArray),
                // Unknown commands leave nothing pending.
                _ => self.set_mode(Mode::ReadArray),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the hook's calls.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<bool>>>);

    impl RomMode for Log {
        fn set_read_array(&mut self, read_array: bool) {
            self.0.lock().unwrap().push(read_array);
        }
    }

    impl Log {
        fn calls(&self) -> Vec<bool> {
            self.0.lock().unwrap().clone()
        }
    }

    const LEN: usize = 4 * 4096;

    fn flash(bytes: Vec<u8>) -> (Cfi01Flash, VecBacking, Log) {
        let backing = VecBacking::new(bytes);
        let log = Log::default();
        let dev = Cfi01Flash::new(Box::new(backing.clone()), Box::new(log.clone()), 4096);
        (dev, backing, log)
    }

    /// A guest byte read as KVM would serve it: from the read-only mapping while the VMM has it
    /// mapped (initially, and after the hook last said `true`), otherwise from the device.
    fn guest_read(dev: &mut Cfi01Flash, backing: &VecBacking, log: &Log, offset: u64) -> u8 {
        let mapped = log.calls().last().copied().unwrap_or(true);
        let mut b = [0u8];
        if mapped {
            backing.read(offset, &mut b);
        } else {
            dev.read(offset, &mut b);
        }
        b[0]
    }

    fn guest_write(dev: &mut Cfi01Flash, offset: u64, value: u8) {
        dev.write(offset, &[value]);
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Detected {
        Ram,
        Rom,
        Flash,
        Nothing,
    }

    /// OVMF's `QemuFlashDetected` on block 0, byte for byte.
    fn ovmf_detect(dev: &mut Cfi01Flash, backing: &VecBacking, log: &Log) -> Detected {
        let Some(at) = (0..4096u64).find(|&o| {
            let b = guest_read(dev, backing, log, o);
            b != 0x50 && b != 0x70 && b != 0x00
        }) else {
            return Detected::Nothing;
        };
        let original = guest_read(dev, backing, log, at);
        guest_write(dev, at, 0x50);
        let probe = guest_read(dev, backing, log, at);
        if original != 0x50 && probe == 0x50 {
            guest_write(dev, at, original);
            return Detected::Ram;
        }
        guest_write(dev, at, 0x70);
        let probe = guest_read(dev, backing, log, at);
        if probe == original {
            Detected::Rom
        } else if probe == 0x70 {
            guest_write(dev, at, original);
            Detected::Ram
        } else if probe == 0x00 {
            guest_write(dev, at, 0xff);
            Detected::Flash
        } else {
            Detected::Nothing
        }
    }

    #[test]
    fn ovmf_detects_flash() {
        let mut bytes = vec![0u8; LEN];
        bytes[0] = 0x50;
        bytes[1] = 0x70;
        bytes[2] = 0x00;
        bytes[3] = 0x5a;
        let (mut dev, backing, log) = flash(bytes.clone());
        assert_eq!(ovmf_detect(&mut dev, &backing, &log), Detected::Flash);
        // One trip out of read-array mode and back; nothing written.
        assert_eq!(log.calls(), [false, true]);
        assert!(dev.read_array());
        assert_eq!(backing.contents(), bytes);
        // After the probe the device reads the contents again.
        let mut b = [0u8];
        dev.read(3, &mut b);
        assert_eq!(b, [0x5a]);
    }

    #[test]
    fn ovmf_variable_write_and_block_erase() {
        let mut bytes = vec![0u8; LEN];
        bytes[4096..8192].fill(0x11);
        let (mut dev, backing, log) = flash(bytes);

        // QemuFlashWrite: 0x10 + data per byte, then 0xFF at the last byte.
        let payload = [0xa5u8, 0xff, 0x3c];
        for (i, &b) in payload.iter().enumerate() {
            guest_write(&mut dev, 0x2003 + i as u64, 0x10);
            guest_write(&mut dev, 0x2003 + i as u64, b);
            // Between bytes the device reports status, not contents.
            assert_eq!(guest_read(&mut dev, &backing, &log, 0x2003), STATUS_READY);
        }
        guest_write(&mut dev, 0x2005, 0xff);
        let contents = backing.contents();
        // Stored as written over zeroes (an AND would leave 0x00).
        assert_eq!(&contents[0x2003..0x2006], &payload);
        assert_eq!(contents[0x2002], 0);
        assert_eq!(contents[0x2006], 0);
        assert_eq!(log.calls(), [false, true]);

        // QemuFlashEraseBlock at block 1 (the confirm may land anywhere in the block).
        guest_write(&mut dev, 0x1000, 0x20);
        guest_write(&mut dev, 0x1234, 0xd0);
        assert_eq!(guest_read(&mut dev, &backing, &log, 0x1000), STATUS_READY);
        guest_write(&mut dev, 0x1000, 0xff);
        let contents = backing.contents();
        assert!(contents[4096..8192].iter().all(|&b| b == 0xff));
        assert!(contents[..4096].iter().all(|&b| b == 0));
        assert_eq!(&contents[0x2003..0x2006], &payload);
        assert_eq!(log.calls(), [false, true, false, true]);
        assert_eq!(guest_read(&mut dev, &backing, &log, 0x1000), 0xff);
    }

    #[test]
    fn status_mode_persists_until_read_array() {
        let (mut dev, _backing, log) = flash(vec![7; LEN]);
        dev.write(0, &[0x40]);
        dev.write(0, &[0x01]);
        for _ in 0..3 {
            let mut b = [0u8; 4];
            dev.read(100, &mut b);
            assert_eq!(b, [STATUS_READY; 4]);
        }
        // 0x70 keeps the status mode; 0x00 is read array.
        dev.write(0, &[0x70]);
        assert!(!dev.read_array());
        dev.write(0, &[0x00]);
        let mut b = [0u8; 2];
        dev.read(0, &mut b);
        assert_eq!(b, [0x01, 7]);
        assert_eq!(log.calls(), [false, true]);
    }

    #[test]
    fn bad_erase_confirm_sets_error_and_clear_status_resets_it() {
        let (mut dev, backing, log) = flash(vec![7; LEN]);
        dev.write(0, &[0x20]);
        dev.write(0, &[0x33]);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(
            b[0],
            STATUS_READY | STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR
        );
        assert!(backing.contents().iter().all(|&b| b == 7));
        // 0x50 clears everything (ready bit too) and goes to read array.
        dev.write(0, &[0x50]);
        assert!(dev.read_array());
        dev.read(0, &mut b);
        assert_eq!(b, [7]);
        dev.write(0, &[0x70]);
        dev.read(0, &mut b);
        assert_eq!(b, [0]);
        assert_eq!(log.calls(), [false, true, false]);
        dev.reset();
        assert_eq!(log.calls(), [false, true, false, true]);
        dev.write(0, &[0x70]);
        dev.read(0, &mut b);
        assert_eq!(b, [STATUS_READY]);
    }

    #[test]
    fn identify_reads_zero_and_unknown_commands_return_to_read_array() {
        let (mut dev, _backing, log) = flash(vec![7; LEN]);
        // Unknown command in read-array mode: no mode change, no hook call.
        dev.write(5, &[0x42]);
        assert!(log.calls().is_empty());
        dev.write(5, &[0x98]);
        let mut b = [0xaau8; 4];
        dev.read(0x10, &mut b);
        assert_eq!(b, [0; 4]);
        dev.write(5, &[0x90]);
        dev.read(0, &mut b);
        assert_eq!(b, [0; 4]);
        dev.write(5, &[0x42]);
        assert!(dev.read_array());
        dev.read(0, &mut b);
        assert_eq!(b, [7; 4]);
        assert_eq!(log.calls(), [false, true]);
    }

    #[test]
    fn wide_writes_and_writes_past_the_end() {
        let (mut dev, backing, _log) = flash(vec![0; LEN]);
        // The low byte is the command; a wide program stores every byte.
        dev.write(0x100, &[0x10, 0xee, 0xee, 0xee]);
        dev.write(0x100, &[1, 2, 3, 4]);
        dev.write(0, &[0xff, 0, 0, 0]);
        assert_eq!(&backing.contents()[0x100..0x104], &[1, 2, 3, 4]);
        // Programs straddling or past the end are clipped or dropped.
        let last = LEN as u64 - 2;
        dev.write(last, &[0x10]);
        dev.write(last, &[9, 9, 9, 9]);
        dev.write(LEN as u64 + 8, &[0x10]);
        dev.write(LEN as u64 + 8, &[5]);
        dev.write(u64::MAX, &[0x20]);
        dev.write(u64::MAX, &[0xd0]);
        let contents = backing.contents();
        assert_eq!(contents.len(), LEN);
        assert_eq!(&contents[LEN - 3..], &[0, 9, 9]);
        assert!(contents[..0x100].iter().all(|&b| b == 0));
        dev.write(0, &[0xff]);
        let mut b = [0u8; 4];
        dev.read(last, &mut b);
        assert_eq!(b, [9, 9, 0xff, 0xff]);
    }

    #[test]
    fn erase_of_a_short_last_block_stays_inside() {
        let (mut dev, backing, _log) = flash(vec![0; 4096 + 100]);
        dev.write(4096 + 50, &[0x20]);
        dev.write(4096 + 50, &[0xd0]);
        let contents = backing.contents();
        assert_eq!(contents.len(), 4196);
        assert!(contents[4096..].iter().all(|&b| b == 0xff));
        assert!(contents[..4096].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_secure_flash_takes_commands_only_from_smm() {
        let bytes = vec![0x11u8; LEN];
        let (dev, backing, log) = flash(bytes.clone());
        let mut dev = dev.secure();
        // Outside SMM: program and erase are dropped, the device never leaves read-array mode
        // (so the read-only mapping is never taken away) and the contents stay.
        crate::smm::with_access_from_smm(false, || {
            for (at, cmd) in [(0x10, 0x10u8), (0x10, 0x42), (0x1000, 0x20), (0x1000, 0xd0)] {
                guest_write(&mut dev, at, cmd);
            }
            assert!(dev.read_array());
            assert_eq!(ovmf_detect(&mut dev, &backing, &log), Detected::Rom);
        });
        assert!(log.calls().is_empty(), "{:?}", log.calls());
        assert_eq!(backing.contents(), bytes);
        // From SMM it is the flash it always was.
        crate::smm::with_access_from_smm(true, || {
            guest_write(&mut dev, 0x10, 0x10);
            guest_write(&mut dev, 0x10, 0x42);
        });
        assert_eq!(backing.contents()[0x10], 0x42);
        assert!(!dev.read_array());
        // In the middle of the update (status mode) an outsider still reads the contents,
        // where SMM reads the status.
        let mut b = [0u8];
        crate::smm::with_access_from_smm(false, || dev.read(0x10, &mut b));
        assert_eq!(b, [0x42]);
        crate::smm::with_access_from_smm(true, || dev.read(0x10, &mut b));
        assert_eq!(b[0] & STATUS_READY, STATUS_READY);
        // And an outsider cannot end the update either.
        crate::smm::with_access_from_smm(false, || guest_write(&mut dev, 0, 0xff));
        assert!(!dev.read_array());
    }
}
