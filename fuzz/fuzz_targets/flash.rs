//! The CFI01 flash from a hostile guest: arbitrary read and write sequences (biased towards
//! the command bytes OVMF uses) and machine resets against a 64 KiB backing. Nothing may panic;
//! the read-array hook must never be told the same thing twice in a row and must always agree
//! with the device; the backing never changes size; and in read-array mode the device reads the
//! same bytes the VMM's read-only mapping would show.

#![no_main]

use std::sync::{Arc, Mutex};

use devices::BusDevice;
use devices::flash::{Cfi01Flash, FlashBacking, RomMode, VecBacking};
use libfuzzer_sys::fuzz_target;

const LEN: u64 = 64 << 10;
const COMMANDS: [u8; 10] = [0xff, 0x00, 0x10, 0x40, 0x20, 0xd0, 0x50, 0x70, 0x90, 0x98];

/// The last value the hook was given (the device starts in read-array mode).
#[derive(Clone)]
struct Checked(Arc<Mutex<bool>>);

impl RomMode for Checked {
    fn set_read_array(&mut self, read_array: bool) {
        let mut last = self.0.lock().unwrap();
        assert_ne!(*last, read_array, "redundant read-array hook call");
        *last = read_array;
    }
}

fuzz_target!(|data: &[u8]| {
    let backing = VecBacking::new((0..LEN).map(|i| (i * 13) as u8).collect());
    let hook = Checked(Arc::new(Mutex::new(true)));
    let mut dev = Cfi01Flash::new(Box::new(backing.clone()), Box::new(hook.clone()), 4096);

    // Each operation: kind, width code, 4 offset bytes, 8 value bytes.
    for op in data.chunks_exact(14) {
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let raw = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]]));
        // Mostly inside the flash, sometimes just past it or far away.
        let offset = if op[1] & 0x80 != 0 {
            raw
        } else {
            raw % (LEN + 16)
        };
        let mut value = [0u8; 8];
        value.copy_from_slice(&op[6..14]);
        if op[1] & 0x40 != 0 {
            value[0] = COMMANDS[usize::from(value[0]) % COMMANDS.len()];
        }
        match op[0] % 8 {
            0..=3 => dev.write(offset, &value[..len]),
            4..=6 => {
                let mut out = [0u8; 8];
                dev.read(offset, &mut out[..len]);
                if dev.read_array() && offset < LEN {
                    let mut expect = [0xffu8; 8];
                    let n = (LEN - offset).min(len as u64) as usize;
                    backing.read(offset, &mut expect[..n]);
                    assert_eq!(out[..len], expect[..len]);
                }
            }
            _ => dev.reset(),
        }
        assert_eq!(*hook.0.lock().unwrap(), dev.read_array());
        assert_eq!(backing.len(), LEN);
    }
});
