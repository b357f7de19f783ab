//! Address-range dispatch for port I/O and MMIO exits.
//!
//! A vCPU thread looks the address up and calls the device with the offset into its range. The
//! bus is built before the vCPUs start and never changes afterwards, so lookups need no lock;
//! each device has its own mutex, taken only for the one access.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range; `data` is the
/// access (1, 2, 4 or 8 bytes, as the guest made it). Accesses a device does not implement
/// read as all ones and are otherwise ignored: a guest cannot fail the VMM by probing.
pub trait BusDevice: Send {
    /// Guest read.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A zero-length or wrapping range.
    #[error("bus range {base:#x}+{len:#x} is invalid")]
    Invalid {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `[base, base + len)` with `device`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Invalid { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    /// The device and offset serving an access of `size` bytes at `addr`, if one covers it all.
    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let i = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = &self.entries[i];
        let offset = addr - e.base;
        (offset.checked_add(size as u64)? <= e.len).then_some((e, offset))
    }

    /// Dispatch a read; returns false (and fills `data` with ones) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, recovering from a poisoned mutex: device state is plain data, and one vCPU
/// thread's panic must not take every later access down with it.
fn lock(device: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x70, 2, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        assert_eq!(
            bus.insert(0x3fc, 8, Arc::new(Mutex::new(Echo(vec![])))),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert!(bus.insert(u64::MAX, 2, a.clone()).is_err());
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![7])]);
        // Unclaimed addresses and accesses that run past a device's end read as ones.
        let mut d = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(!bus.write(0x1000, &[1]));
        assert!(!bus.read(0, &mut [0u8; 1]));
    }
}
