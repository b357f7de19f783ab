//! The virtio-pci transport (modern only, virtio 1.x).
//!
//! One 32 KiB memory BAR holds every structure the capabilities point at:
//!
//! | offset   | structure                                  |
//! |----------|--------------------------------------------|
//! | 0x0000   | common configuration                       |
//! | 0x1000   | ISR status                                 |
//! | 0x2000   | device-specific configuration              |
//! | 0x3000   | notifications, 4 bytes per queue           |
//! | 0x4000   | MSI-X table                                |
//! | 0x6000   | MSI-X pending-bit array                    |
//!
//! Queue notifications never reach this code in normal operation: the VMM binds one ioeventfd
//! per queue at its notify address, and the device's queue thread waits on it. A write that
//! does arrive here (the BAR is being moved, or the access went through the PCI config window)
//! is forwarded to the same eventfd.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, ActiveQueue, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, GuestMemoryMmap, Interrupt,
    VirtioDevice,
};
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_MEMORY};
use crate::pci::msix::MsiVector;
use crate::pci::{Bar, MsiRouter, Msix, PciConfig, PciDevice, PciIds};

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Most queues one device may have (the notify area is 4 KiB).
pub const MAX_QUEUES: usize = 1024;
/// Most MSI-X vectors one device may have (the table area is 8 KiB).
pub const MAX_VECTORS: usize = 512;
/// "No vector" in the MSI-X vector registers.
pub const NO_VECTOR: u16 = 0xffff;

const PCI_VENDOR_ID_REDHAT_QUMRANET: u16 = 0x1af4;
const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const STATUS_FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;
const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// Where the VMM binds queue notifications: an ioeventfd per notify address.
pub trait IoEventRegistry: Send + Sync {
    /// Signal `fd` on any guest write to `addr`.
    fn register(&self, addr: u64, fd: &EventFd) -> std::io::Result<()>;
    /// Undo [`IoEventRegistry::register`].
    fn unregister(&self, addr: u64, fd: &EventFd) -> std::io::Result<()>;
}

/// Errors from creating the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device asks for more queues or vectors than the BAR layout has room for.
    #[error("a virtio device with {0} queues does not fit the virtio-pci layout")]
    TooManyQueues(usize),
    /// A host resource (eventfd, ioeventfd) could not be created.
    #[error("virtio-pci setup: {0}")]
    Host(#[from] std::io::Error),
    /// PCI configuration space error.
    #[error(transparent)]
    Config(#[from] crate::pci::config::ConfigError),
}

#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    max: u16,
    size: u16,
    enable: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(max: u16) -> Self {
        QueueRegs {
            max,
            size: max,
            enable: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    queue_vectors: Arc<[AtomicU16]>,
    config_vector: Arc<AtomicU16>,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
}

impl PciInterrupt {
    fn raise(&self, vector: u16, isr_bit: u8) {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != NO_VECTOR {
            self.msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .trigger(vector);
        }
    }
}

impl Interrupt for PciInterrupt {
    fn queue(&self, index: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(index))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Relaxed));
        self.raise(vector, 1);
    }

    fn config(&self) {
        self.raise(self.config_vector.load(Ordering::Relaxed), 2);
    }

    fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.config();
    }

    fn queue_irqfd(&self, index: u16) -> Option<EventFd> {
        let vector = self
            .queue_vectors
            .get(usize::from(index))?
            .load(Ordering::SeqCst);
        self.msix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .irqfd(vector)
    }
}

/// A virtio device on PCI.
pub struct VirtioPci {
    config: PciConfig,
    pci_cfg_cap: usize,
    msix_cap: usize,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    msix: Arc<Mutex<Msix>>,
    ioevents: Arc<dyn IoEventRegistry>,
    ioevent_base: Option<u64>,
    notify: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    queue_vectors: Arc<[AtomicU16]>,
    config_vector: Arc<AtomicU16>,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
    active: bool,
    /// The status before the driver's last reset, shown to the driver until the device says
    /// the reset is done ([`VirtioDevice::reset_pending`]).
    resetting_from: u8,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("type", &self.device.device_type())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![
        CAP_VENDOR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        0,
        0,
        0,
        0,
    ];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

impl VirtioPci {
    /// Put `device` on PCI with its BAR at `bar_addr` (aligned to [`BAR0_SIZE`]). `vectors`
    /// must hold one MSI vector per queue plus one for config changes.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
        vectors: Vec<MsiVector>,
        router: Arc<dyn MsiRouter>,
        ioevents: Arc<dyn IoEventRegistry>,
    ) -> Result<VirtioPci, TransportError> {
        let nq = device.queue_max_sizes().len();
        if nq > MAX_QUEUES || vectors.len() > MAX_VECTORS {
            return Err(TransportError::TooManyQueues(nq));
        }
        let mut config = PciConfig::new(PciIds {
            vendor: PCI_VENDOR_ID_REDHAT_QUMRANET,
            device: VIRTIO_PCI_DEVICE_ID_BASE + device.device_type(),
            revision: 1,
            class: device.pci_class(),
            subsystem_vendor: PCI_VENDOR_ID_REDHAT_QUMRANET,
            subsystem: 0x1100,
        });
        config.add_bar(
            0,
            Bar {
                size: BAR0_SIZE,
                is_64bit: false,
                prefetchable: false,
            },
            bar_addr,
        )?;
        let msix = Msix::new(vectors, router);
        let none = [0u8; 20];
        config.add_capability(
            &vendor_cap(CAP_COMMON, COMMON_OFFSET, COMMON_LEN, &[]),
            &none[..16],
        )?;
        config.add_capability(
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                (nq as u64).max(1) * u64::from(NOTIFY_MULTIPLIER),
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &none,
        )?;
        config.add_capability(&vendor_cap(CAP_ISR, ISR_OFFSET, 1, &[]), &none[..16])?;
        config.add_capability(
            &vendor_cap(CAP_DEVICE, DEVICE_OFFSET, DEVICE_LEN, &[]),
            &none[..16],
        )?;
        // The PCI configuration access window: BAR, offset, length and data are the driver's.
        let mut cfg_writable = [0u8; 20];
        cfg_writable[4] = 0xff;
        cfg_writable[8..20].fill(0xff);
        let pci_cfg_cap =
            config.add_capability(&vendor_cap(CAP_PCI_CFG, 0, 0, &[0; 4]), &cfg_writable)?;
        let (body, writable) = msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(&body, &writable)?;
        config.set_command(COMMAND_MEMORY | COMMAND_BUS_MASTER);

        let notify = (0..nq)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()?;
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|m| QueueRegs::new(*m))
            .collect();
        let mut dev = VirtioPci {
            config,
            pci_cfg_cap,
            msix_cap,
            device,
            mem,
            msix: Arc::new(Mutex::new(msix)),
            ioevents,
            ioevent_base: None,
            notify,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues,
            queue_vectors: (0..nq).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            isr: Arc::new(AtomicU8::new(0)),
            needs_reset: Arc::new(AtomicBool::new(false)),
            active: false,
            resetting_from: 0,
        };
        dev.update_ioevents()?;
        Ok(dev)
    }

    /// Bind the queue notify addresses where BAR 0 is decoded now.
    fn update_ioevents(&mut self) -> std::io::Result<()> {
        let base = self.config.decoded_bar(0).map(|(a, _)| a);
        if base == self.ioevent_base {
            return Ok(());
        }
        let addr =
            |base: u64, q: usize| base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER);
        if let Some(old) = self.ioevent_base.take() {
            for (q, fd) in self.notify.iter().enumerate() {
                self.ioevents.unregister(addr(old, q), fd)?;
            }
        }
        if let Some(new) = base {
            for (q, fd) in self.notify.iter().enumerate() {
                self.ioevents.register(addr(new, q), fd)?;
            }
            self.ioevent_base = Some(new);
        }
        Ok(())
    }

    fn device_features(&self) -> u64 {
        self.device.features() | F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX
    }

    fn reset(&mut self) {
        self.device.reset();
        self.resetting_from = self.status;
        self.active = false;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max);
        }
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        // Stale notifications from before the reset must not wake the next activation.
        for fd in &self.notify {
            let _ = fd.read();
        }
    }

    fn write_status(&mut self, mut v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device_features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                // The device refuses the feature set; the driver sees FEATURES_OK unset.
                v &= !STATUS_FEATURES_OK;
            }
        }
        self.status = v;
        if v & STATUS_DRIVER_OK != 0
            && v & STATUS_FEATURES_OK != 0
            && v & STATUS_FAILED == 0
            && !self.active
        {
            self.activate();
        }
    }

    fn interrupt(&self) -> Arc<dyn Interrupt> {
        Arc::new(PciInterrupt {
            msix: self.msix.clone(),
            queue_vectors: self.queue_vectors.clone(),
            config_vector: self.config_vector.clone(),
            isr: self.isr.clone(),
            needs_reset: self.needs_reset.clone(),
        })
    }

    fn activate(&mut self) {
        self.active = true;
        let mut queues = Vec::new();
        for (i, regs) in self.queues.iter().enumerate() {
            if !regs.enable {
                continue;
            }
            match self.build_queue(regs) {
                Some(queue) => match self.notify[i].try_clone() {
                    Ok(notify) => queues.push(ActiveQueue {
                        index: i as u16,
                        queue,
                        notify,
                    }),
                    Err(_) => return self.interrupt().needs_reset(),
                },
                None => return self.interrupt().needs_reset(),
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            features: self.driver_features,
            queues,
            interrupt: self.interrupt(),
        };
        if self.device.activate(activation).is_err() {
            self.interrupt().needs_reset();
        }
    }

    fn build_queue(&self, regs: &QueueRegs) -> Option<Queue> {
        if regs.size == 0 || !regs.size.is_power_of_two() || regs.size > regs.max {
            return None;
        }
        let mut q = Queue::new(regs.max).ok()?;
        q.set_size(regs.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(regs.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(regs.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(regs.used);
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(self.driver_features & F_EVENT_IDX != 0);
        q.set_ready(true);
        // The queue library ignores misaligned addresses; check it took them all.
        (q.desc_table() == regs.desc
            && q.avail_ring() == regs.avail
            && q.used_ring() == regs.used
            && q.size() == regs.size
            && q.is_valid(&self.mem))
        .then_some(q)
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let features = match self.device_feature_select {
            0 => self.device_features() as u32,
            1 => (self.device_features() >> 32) as u32,
            _ => 0,
        };
        let driver = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        // Until the device has finished its reset the driver must not start again.
        let shown = if self.status == 0 && self.device.reset_pending() {
            self.resetting_from
        } else {
            self.status
        };
        let status = shown
            | if self.needs_reset.load(Ordering::SeqCst) {
                STATUS_NEEDS_RESET
            } else {
                0
            };
        b[0..4].copy_from_slice(&self.device_feature_select.to_le_bytes());
        b[4..8].copy_from_slice(&features.to_le_bytes());
        b[8..12].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        b[12..16].copy_from_slice(&driver.to_le_bytes());
        b[16..18].copy_from_slice(&self.config_vector.load(Ordering::SeqCst).to_le_bytes());
        b[18..20].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        b[20] = status;
        b[21] = 0; // config_generation: the config space never changes under the driver.
        b[22..24].copy_from_slice(&self.queue_select.to_le_bytes());
        if let Some(q) = self.selected() {
            let i = usize::from(self.queue_select);
            b[24..26].copy_from_slice(&q.size.to_le_bytes());
            b[26..28].copy_from_slice(&self.queue_vectors[i].load(Ordering::SeqCst).to_le_bytes());
            b[28..30].copy_from_slice(&u16::from(q.enable).to_le_bytes());
            b[30..32].copy_from_slice(&self.queue_select.to_le_bytes());
            b[32..40].copy_from_slice(&q.desc.to_le_bytes());
            b[40..48].copy_from_slice(&q.avail.to_le_bytes());
            b[48..56].copy_from_slice(&q.used.to_le_bytes());
        } else {
            b[26..28].copy_from_slice(&NO_VECTOR.to_le_bytes());
        }
        b
    }

    fn valid_vector(&self, v: u16) -> u16 {
        let n = self.msix.lock().unwrap_or_else(|p| p.into_inner()).len();
        if usize::from(v) < n { v } else { NO_VECTOR }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(raw);
        let configurable = !self.active && self.status & STATUS_DRIVER_OK == 0;
        match (offset, data.len()) {
            (0, 4) => self.device_feature_select = v as u32,
            (8, 4) => self.driver_feature_select = v as u32,
            (12, 4) if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            },
            (16, 2) => {
                let vector = self.valid_vector(v as u16);
                self.config_vector.store(vector, Ordering::SeqCst);
            }
            (20, 1) => self.write_status(v as u8),
            (22, 2) => self.queue_select = v as u16,
            (26, 2) => {
                let vector = self.valid_vector(v as u16);
                if let Some(slot) = self.queue_vectors.get(usize::from(self.queue_select)) {
                    slot.store(vector, Ordering::SeqCst);
                }
            }
            (24 | 28 | 32..=55, _) if configurable => {
                let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
                    return;
                };
                match (offset, data.len()) {
                    (24, 2) => q.size = v as u16,
                    (28, 2) => q.enable = v == 1,
                    (32 | 40 | 48, 8) => *queue_addr(q, offset) = v,
                    (32 | 40 | 48, 4) => {
                        let a = queue_addr(q, offset);
                        *a = (*a & !0xffff_ffff) | v;
                    }
                    (36 | 44 | 52, 4) => {
                        let a = queue_addr(q, offset - 4);
                        *a = (*a & 0xffff_ffff) | (v << 32);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn notify_queue(&self, offset: u64) {
        let q = (offset / u64::from(NOTIFY_MULTIPLIER)) as usize;
        if let Some(fd) = self.notify.get(q) {
            let _ = fd.write(1);
        }
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|e| e <= start + size)
        };
        data.fill(0);
        if within(COMMON_OFFSET, COMMON_LEN) {
            let img = self.common_image();
            let o = (offset - COMMON_OFFSET) as usize;
            data.copy_from_slice(&img[o..o + data.len()]);
        } else if within(ISR_OFFSET, 1) {
            // Reading the ISR acknowledges it.
            data[0] = self.isr.swap(0, Ordering::SeqCst);
        } else if within(DEVICE_OFFSET, DEVICE_LEN) {
            self.device.read_config(offset - DEVICE_OFFSET, data);
        } else {
            let msix = self.msix.lock().unwrap_or_else(|p| p.into_inner());
            if within(MSIX_TABLE_OFFSET, msix.table_len()) {
                msix.read_table(offset - MSIX_TABLE_OFFSET, data);
            } else if within(MSIX_PBA_OFFSET, msix.pba_len()) {
                msix.read_pba(offset - MSIX_PBA_OFFSET, data);
            }
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|e| e <= start + size)
        };
        if len > 8 {
            return;
        }
        if within(COMMON_OFFSET, COMMON_LEN) {
            self.write_common(offset - COMMON_OFFSET, data);
        } else if within(DEVICE_OFFSET, DEVICE_LEN) {
            self.device.write_config(offset - DEVICE_OFFSET, data);
        } else if within(
            NOTIFY_OFFSET,
            self.notify.len() as u64 * u64::from(NOTIFY_MULTIPLIER),
        ) {
            self.notify_queue(offset - NOTIFY_OFFSET);
        } else {
            let mut msix = self.msix.lock().unwrap_or_else(|p| p.into_inner());
            if within(MSIX_TABLE_OFFSET, msix.table_len()) {
                msix.write_table(offset - MSIX_TABLE_OFFSET, data);
            }
        }
    }

    /// The BAR access described by the PCI configuration access capability, if valid.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let c = self.pci_cfg_cap;
        let mut b = [0u8; 12];
        self.config.read(c + 4, &mut b);
        let bar = b[0];
        let offset = u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        (bar == 0 && matches!(len, 1 | 2 | 4) && offset + len as u64 <= BAR0_SIZE)
            .then_some((offset, len))
    }
}

fn queue_addr(q: &mut QueueRegs, offset: u64) -> &mut u64 {
    match offset {
        32 => &mut q.desc,
        40 => &mut q.avail,
        _ => &mut q.used,
    }
}

fn overlaps(offset: usize, len: usize, start: usize, size: usize) -> bool {
    offset < start + size && start < offset.saturating_add(len)
}

impl PciDevice for VirtioPci {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + 16;
        if overlaps(offset, data.len(), window, 4)
            && let Some((bar_offset, len)) = self.pci_cfg_window()
        {
            let mut value = [0u8; 4];
            self.bar_read(bar_offset, &mut value[..len]);
            if let Some(raw) = self.config.raw_mut(window, 4) {
                raw.copy_from_slice(&value);
            }
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let window = self.pci_cfg_cap + 16;
        if overlaps(offset, data.len(), window, 4)
            && let Some((bar_offset, len)) = self.pci_cfg_window()
        {
            let mut value = [0u8; 4];
            self.config.read(window, &mut value);
            self.bar_write(bar_offset, &value[..len]);
        }
        if overlaps(offset, data.len(), self.msix_cap + 2, 2) {
            let control = self.config.read_u16(self.msix_cap + 2);
            self.msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_control(control);
        }
        if PciConfig::write_affects_decoding(offset, data.len()) {
            // If KVM refuses the new binding, notifications still arrive as MMIO exits and are
            // forwarded to the same eventfds: slower, not broken.
            let _ = self.update_ioevents();
        }
    }

    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 && data.len() <= 8 {
            self.bar_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 {
            self.bar_write(offset, data);
        }
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        // Stop the device's threads before the memory and eventfds they use go away.
        self.device.reset();
    }
}

#[cfg(test)]
mod tests;
