//! MSI-X: the capability, the vector table and the pending-bit array.
//!
//! Each vector owns a GSI and an irqfd that the VMM set up; the table only decides what that GSI
//! means (the MSI address and data the guest wrote, handed to the VMM as a route) and whether a
//! trigger may go out now or must wait in the pending-bit array until the guest unmasks it.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// PCI capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Length of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors one function may have (the table size field is 11 bits).
pub const MSIX_MAX_VECTORS: usize = 2048;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

/// An MSI message: what the guest asked an interrupt to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// The VMM's side of MSI delivery: point a GSI at an MSI message.
pub trait MsiRouter: Send + Sync {
    /// Make interrupts on `gsi` deliver `msg`.
    fn route(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()>;
}

/// One vector: the GSI the VMM allocated for it and the irqfd bound to that GSI.
#[derive(Debug)]
pub struct MsiVector {
    /// Global system interrupt number.
    pub gsi: u32,
    /// Writing this eventfd raises the interrupt.
    pub irqfd: EventFd,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    address_low: u32,
    address_high: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.address_high) << 32) | u64::from(self.address_low),
            data: self.data,
        }
    }
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    routed: Vec<Option<MsiMessage>>,
    vectors: Vec<MsiVector>,
    router: Arc<dyn MsiRouter>,
    enabled: bool,
    function_masked: bool,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Msix {
    /// A table with one entry per vector, all masked, MSI-X disabled (the reset state).
    pub fn new(vectors: Vec<MsiVector>, router: Arc<dyn MsiRouter>) -> Self {
        let n = vectors.len().min(MSIX_MAX_VECTORS);
        Msix {
            entries: vec![
                Entry {
                    control: ENTRY_MASKED,
                    ..Entry::default()
                };
                n
            ],
            pending: vec![0; n.div_ceil(64)],
            routed: vec![None; n],
            vectors,
            router,
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size in bytes of the table.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size in bytes of the pending-bit array.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability body and its writable mask, for a table at `table_offset` and a PBA at
    /// `pba_offset` in BAR `bar`. Only the enable and function-mask bits are writable.
    pub fn capability(
        &self,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) -> ([u8; MSIX_CAP_LEN], [u8; MSIX_CAP_LEN]) {
        let mut body = [0u8; MSIX_CAP_LEN];
        body[0] = MSIX_CAP_ID;
        let size_field = (self.entries.len().max(1) - 1) as u16;
        body[2..4].copy_from_slice(&size_field.to_le_bytes());
        body[4..8].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let mut writable = [0u8; MSIX_CAP_LEN];
        writable[3] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, writable)
    }

    /// The guest wrote the message control word.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for v in 0..self.entries.len() {
            self.refresh(v);
        }
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn live(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && self.entries[v].control & ENTRY_MASKED == 0
    }

    /// After a change: route an unmasked vector to its current message, and deliver what was
    /// held back while it was masked.
    fn refresh(&mut self, v: usize) {
        if !self.live(v) {
            return;
        }
        let msg = self.entries[v].message();
        if self.routed[v] != Some(msg) {
            // A route KVM refuses (a nonsense address) leaves the vector undeliverable, which
            // is the guest's own problem; the VMM carries on.
            let ok = self.router.route(self.vectors[v].gsi, msg).is_ok();
            self.routed[v] = ok.then_some(msg);
        }
        let (word, bit) = (v / 64, 1u64 << (v % 64));
        if self.pending[word] & bit != 0 {
            self.pending[word] &= !bit;
            self.fire(v);
        }
    }

    fn fire(&self, v: usize) {
        if self.routed[v].is_some() {
            let _ = self.vectors[v].irqfd.write(1);
        }
    }

    /// Raise vector `v`, or mark it pending while it is masked. Out-of-range vectors (including
    /// VIRTIO_MSI_NO_VECTOR) are dropped.
    pub fn trigger(&mut self, v: u16) {
        let v = usize::from(v);
        if v >= self.entries.len() {
            return;
        }
        if self.live(v) {
            self.fire(v);
        } else if self.enabled {
            self.pending[v / 64] |= 1u64 << (v % 64);
        }
    }

    /// A duplicate of vector `v`'s irqfd. A back end that signals it directly bypasses masking,
    /// which a guest only uses briefly while it reprograms a vector.
    pub fn irqfd(&self, v: u16) -> Option<EventFd> {
        self.vectors.get(usize::from(v))?.irqfd.try_clone().ok()
    }

    /// Guest read of the table. Only aligned dword and qword accesses are meaningful.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let read_dword = |off: u64, out: &mut [u8]| {
            let Some(e) = self.entries.get((off / MSIX_ENTRY_SIZE) as usize) else {
                return;
            };
            let v = match off % MSIX_ENTRY_SIZE {
                0 => e.address_low,
                4 => e.address_high,
                8 => e.data,
                _ => e.control,
            };
            out.copy_from_slice(&v.to_le_bytes());
        };
        match data.len() {
            4 if offset.is_multiple_of(4) => read_dword(offset, data),
            8 if offset.is_multiple_of(8) => {
                let (lo, hi) = data.split_at_mut(4);
                read_dword(offset, lo);
                read_dword(offset + 4, hi);
            }
            _ => {}
        }
    }

    /// Guest write of the table.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut write_dword = |off: u64, bytes: &[u8]| {
            let v = (off / MSIX_ENTRY_SIZE) as usize;
            let Some(e) = self.entries.get_mut(v) else {
                return;
            };
            let mut b = [0u8; 4];
            b.copy_from_slice(bytes);
            let value = u32::from_le_bytes(b);
            match off % MSIX_ENTRY_SIZE {
                0 => e.address_low = value,
                4 => e.address_high = value,
                8 => e.data = value,
                _ => e.control = value & ENTRY_MASKED,
            }
            self.refresh(v);
        };
        match data.len() {
            4 if offset.is_multiple_of(4) => write_dword(offset, data),
            8 if offset.is_multiple_of(8) => {
                write_dword(offset, &data[..4]);
                write_dword(offset + 4, &data[4..]);
            }
            _ => {}
        }
    }

    /// Guest read of the pending-bit array (writes to it are ignored, as the spec says).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset.saturating_add(i as u64);
            *b = self
                .pending
                .get((byte / 8) as usize)
                .map_or(0, |w| (w >> ((byte % 8) * 8)) as u8);
        }
    }

    /// Back to the power-on state: disabled, all entries masked, nothing pending.
    pub fn reset(&mut self) {
        let n = self.entries.len();
        *self = Msix::new(std::mem::take(&mut self.vectors), self.router.clone());
        debug_assert_eq!(self.entries.len(), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u32, MsiMessage)>>);
    impl MsiRouter for Recorder {
        fn route(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()> {
            self.0.lock().unwrap().push((gsi, msg));
            Ok(())
        }
    }

    fn msix(n: u32) -> (Msix, Arc<Recorder>) {
        let router = Arc::new(Recorder::default());
        let vectors = (0..n)
            .map(|i| MsiVector {
                gsi: 24 + i,
                irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        (Msix::new(vectors, router.clone()), router)
    }

    fn fired(m: &Msix, v: usize) -> bool {
        m.vectors[v].irqfd.read().is_ok()
    }

    #[test]
    fn routes_on_unmask_and_delivers_pending() {
        let (mut m, router) = msix(3);
        m.set_control(CONTROL_ENABLE);
        // Masked: the trigger is held back as pending.
        m.trigger(1);
        assert!(!fired(&m, 1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(24, &0x4021u32.to_le_bytes());
        assert!(router.0.lock().unwrap().is_empty());
        // Unmasking routes the vector and delivers the pending interrupt.
        m.write_table(28, &0u32.to_le_bytes());
        assert_eq!(
            router.0.lock().unwrap().as_slice(),
            &[(
                25,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x4021
                }
            )]
        );
        assert!(fired(&m, 1));
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        m.trigger(1);
        assert!(fired(&m, 1));
        // Function mask holds everything back.
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.trigger(1);
        assert!(!fired(&m, 1));
        m.set_control(CONTROL_ENABLE);
        assert!(fired(&m, 1));
        let mut d = [0u8; 8];
        m.read_table(16, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0xfee0_0000);
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let (mut m, _) = msix(2);
        m.set_control(CONTROL_ENABLE);
        m.trigger(0xffff);
        m.trigger(2);
        m.write_table(1, &[1, 2, 3, 4]);
        m.write_table(u64::MAX - 3, &[0; 4]);
        m.write_table(0, &[1, 2]);
        m.write_table(4096, &[0; 8]);
        let mut d = [0xaau8; 4];
        m.read_table(u64::MAX - 3, &mut d);
        assert_eq!(d, [0; 4]);
        let mut d = [0u8; 3];
        m.read_pba(u64::MAX, &mut d);
        let (body, writable) = m.capability(0, 0x4000, 0x6000);
        assert_eq!(body[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 1);
        assert_eq!(writable[3], 0xc0);
        m.reset();
        assert!(!m.enabled());
        assert_eq!(m.len(), 2);
    }
}
