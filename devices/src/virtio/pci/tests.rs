use std::sync::Mutex;

use vm_memory::GuestAddress;

use super::*;
use crate::pci::PciDevice;
use crate::virtio::VirtioError;

const BAR: u64 = 0xc000_0000;

/// Index, descriptor table, avail ring, used ring and size of an activated queue.
type QueueSeen = (u16, u64, u64, u64, u16);

#[derive(Default)]
struct Log {
    activations: Vec<(u64, Vec<QueueSeen>)>,
    resets: usize,
    /// The device's back end is still carrying out a reset.
    reset_pending: bool,
}

struct Dummy(Arc<Mutex<Log>>);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u16 {
        4
    }
    fn pci_class(&self) -> u32 {
        0xff_00_00
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 64]
    }
    fn features(&self) -> u64 {
        1 << 3
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(b"config!", offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        let queues = a
            .queues
            .iter()
            .map(|q| {
                (
                    q.index,
                    q.queue.desc_table(),
                    q.queue.avail_ring(),
                    q.queue.used_ring(),
                    q.queue.size(),
                )
            })
            .collect();
        self.0
            .lock()
            .unwrap()
            .activations
            .push((a.features, queues));
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
    fn reset_pending(&self) -> bool {
        self.0.lock().unwrap().reset_pending
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<(bool, u64)>>);
impl IoEventRegistry for Events {
    fn register(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push((true, addr));
        Ok(())
    }
    fn unregister(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0.lock().unwrap().push((false, addr));
        Ok(())
    }
}

struct NoRoutes;
impl MsiRouter for NoRoutes {
    fn route(&self, _gsi: u32, _msg: crate::pci::MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
}

fn device() -> (VirtioPci, Arc<Mutex<Log>>, Arc<Events>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let events = Arc::new(Events::default());
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vectors = (0..3)
        .map(|i| MsiVector {
            gsi: 24 + i,
            irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        })
        .collect();
    let dev = VirtioPci::new(
        Box::new(Dummy(log.clone())),
        mem,
        BAR,
        vectors,
        Arc::new(NoRoutes),
        events.clone(),
    )
    .unwrap();
    (dev, log, events)
}

fn w(d: &mut VirtioPci, off: u64, v: u64, len: usize) {
    d.write_bar(0, off, &v.to_le_bytes()[..len]);
}

fn r(d: &mut VirtioPci, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.read_bar(0, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn cfg_read(d: &mut VirtioPci, off: usize, len: usize) -> u32 {
    let mut b = [0u8; 4];
    d.read_config(off, &mut b[..len]);
    u32::from_le_bytes(b)
}

/// The vendor capabilities by type, and the MSI-X capability's offset.
fn caps(d: &mut VirtioPci) -> (Vec<(u8, u32, u32, usize)>, usize) {
    let mut found = Vec::new();
    let mut msix = 0;
    let mut at = cfg_read(d, 0x34, 1) as usize;
    while at != 0 {
        match cfg_read(d, at, 1) {
            0x09 => found.push((
                cfg_read(d, at + 3, 1) as u8,
                cfg_read(d, at + 8, 4),
                cfg_read(d, at + 12, 4),
                at,
            )),
            0x11 => msix = at,
            other => panic!("unexpected capability {other:#x}"),
        }
        at = cfg_read(d, at + 1, 1) as usize;
    }
    (found, msix)
}

#[test]
fn identity_and_capabilities() {
    let (mut d, _, events) = device();
    assert_eq!(cfg_read(&mut d, 0, 4), 0x1044_1af4);
    assert_eq!(cfg_read(&mut d, 8, 1), 1, "modern devices have revision 1");
    let (vendor, msix) = caps(&mut d);
    let types: Vec<u8> = vendor.iter().map(|c| c.0).collect();
    assert_eq!(types, [1, 2, 3, 4, 5]);
    assert_eq!((vendor[0].1, vendor[0].2), (0, 0x38));
    assert_eq!((vendor[1].1, vendor[1].2), (0x3000, 8));
    assert_eq!(
        cfg_read(&mut d, vendor[1].3 + 16, 4),
        4,
        "notify multiplier"
    );
    // MSI-X: 3 vectors in BAR 0 at 0x4000, PBA at 0x6000.
    assert_eq!(cfg_read(&mut d, msix + 2, 2), 2);
    assert_eq!(cfg_read(&mut d, msix + 4, 4), 0x4000);
    assert_eq!(cfg_read(&mut d, msix + 8, 4), 0x6000);
    // One ioeventfd per queue at its notify address.
    assert_eq!(
        events.0.lock().unwrap().as_slice(),
        &[(true, BAR + 0x3000), (true, BAR + 0x3004)]
    );
    // Device config through the BAR.
    assert_eq!(
        r(&mut d, 0x2000, 4),
        u64::from(u32::from_le_bytes(*b"conf"))
    );
}

#[test]
fn negotiation_queue_setup_and_activation() {
    let (mut d, log, _) = device();
    assert_eq!(r(&mut d, 18, 2), 2, "num_queues");
    w(&mut d, 0, 1, 4);
    assert_eq!(r(&mut d, 4, 4), 1, "VERSION_1 in the high word");
    w(&mut d, 0, 0, 4);
    let low = r(&mut d, 4, 4);
    assert_ne!(low & (1 << 3), 0);
    assert_ne!(low & (1 << 29), 0, "EVENT_IDX");
    w(&mut d, 20, 1 | 2, 1);
    // Without VERSION_1 the device refuses FEATURES_OK.
    w(&mut d, 8, 0, 4);
    w(&mut d, 12, 1 << 3, 4);
    w(&mut d, 20, 1 | 2 | 8, 1);
    assert_eq!(r(&mut d, 20, 1) & 8, 0);
    w(&mut d, 8, 1, 4);
    w(&mut d, 12, 1, 4);
    // A feature the device never offered is refused too.
    w(&mut d, 8, 0, 4);
    w(&mut d, 12, (1 << 3) | (1 << 7), 4);
    w(&mut d, 20, 1 | 2 | 8, 1);
    assert_eq!(r(&mut d, 20, 1) & 8, 0);
    w(&mut d, 12, 1 << 3, 4);
    w(&mut d, 20, 1 | 2 | 8, 1);
    assert_eq!(r(&mut d, 20, 1), 1 | 2 | 8);
    // Queue 1: size 32, addresses written as two halves, vector 2; queue 0 stays off.
    w(&mut d, 22, 1, 2);
    assert_eq!(r(&mut d, 24, 2), 64);
    w(&mut d, 24, 32, 2);
    w(&mut d, 32, 0x1000, 4);
    w(&mut d, 36, 0, 4);
    w(&mut d, 40, 0x2000, 8);
    w(&mut d, 48, 0x3000, 4);
    w(&mut d, 26, 2, 2);
    assert_eq!(r(&mut d, 26, 2), 2);
    w(&mut d, 26, 7, 2);
    assert_eq!(r(&mut d, 26, 2), u64::from(NO_VECTOR), "no such vector");
    w(&mut d, 26, 2, 2);
    w(&mut d, 28, 1, 2);
    assert_eq!(r(&mut d, 30, 2), 1, "notify offset = index");
    w(&mut d, 20, 1 | 2 | 8 | 4, 1);
    {
        let l = log.lock().unwrap();
        assert_eq!(l.activations.len(), 1);
        let (features, queues) = &l.activations[0];
        assert_eq!(*features, (1 << 32) | (1 << 3));
        assert_eq!(queues.as_slice(), &[(1, 0x1000, 0x2000, 0x3000, 32)]);
    }
    // Queue registers are frozen once the driver is ready.
    w(&mut d, 24, 16, 2);
    assert_eq!(r(&mut d, 24, 2), 32);
    // A reset stops the device and clears the registers.
    w(&mut d, 20, 0, 1);
    assert_eq!(log.lock().unwrap().resets, 1);
    assert_eq!(r(&mut d, 20, 1), 0);
    w(&mut d, 22, 1, 2);
    assert_eq!(r(&mut d, 24, 2), 64);
    assert_eq!(r(&mut d, 28, 2), 0);
}

#[test]
fn a_bad_queue_asks_for_a_reset() {
    let (mut d, log, _) = device();
    w(&mut d, 8, 1, 4);
    w(&mut d, 12, 1, 4);
    w(&mut d, 20, 1 | 2 | 8, 1);
    w(&mut d, 24, 48, 2); // not a power of two
    w(&mut d, 28, 1, 2);
    w(&mut d, 20, 1 | 2 | 8 | 4, 1);
    assert!(log.lock().unwrap().activations.is_empty());
    assert_ne!(r(&mut d, 20, 1) & 0x40, 0, "DEVICE_NEEDS_RESET");
    // Rings outside guest memory are refused the same way.
    w(&mut d, 20, 0, 1);
    w(&mut d, 8, 1, 4);
    w(&mut d, 12, 1, 4);
    w(&mut d, 20, 1 | 2 | 8, 1);
    w(&mut d, 32, 1 << 40, 8);
    w(&mut d, 28, 1, 2);
    w(&mut d, 20, 1 | 2 | 8 | 4, 1);
    assert!(log.lock().unwrap().activations.is_empty());
    assert_ne!(r(&mut d, 20, 1) & 0x40, 0);
}

#[test]
fn notifications_and_bar_moves() {
    let (mut d, _, events) = device();
    // A notify write that reaches the BAR (not KVM's ioeventfd) still signals the queue.
    w(&mut d, 0x3004, 1, 2);
    assert_eq!(d.notify[1].read().unwrap(), 1);
    assert!(d.notify[0].read().is_err());
    // Moving the BAR moves the ioeventfds; sizing with decoding off does not.
    d.write_config(4, &0u16.to_le_bytes());
    d.write_config(0x10, &[0xff; 4]);
    assert_eq!(cfg_read(&mut d, 0x10, 4), 0xffff_8000);
    d.write_config(0x10, &0xd000_0000u32.to_le_bytes());
    d.write_config(4, &2u16.to_le_bytes());
    assert_eq!(
        events.0.lock().unwrap().as_slice(),
        &[
            (true, BAR + 0x3000),
            (true, BAR + 0x3004),
            (false, BAR + 0x3000),
            (false, BAR + 0x3004),
            (true, 0xd000_3000),
            (true, 0xd000_3004),
        ]
    );
}

#[test]
fn pci_cfg_window_reaches_the_bar() {
    let (mut d, _, _) = device();
    let (vendor, _) = caps(&mut d);
    let cap = vendor.iter().find(|c| c.0 == 5).unwrap().3;
    // Read num_queues (common config offset 18, 2 bytes) through the window.
    d.write_config(cap + 4, &[0]);
    d.write_config(cap + 8, &18u32.to_le_bytes());
    d.write_config(cap + 12, &2u32.to_le_bytes());
    assert_eq!(cfg_read(&mut d, cap + 16, 2), 2);
    // Write queue_select through it.
    d.write_config(cap + 8, &22u32.to_le_bytes());
    d.write_config(cap + 16, &1u16.to_le_bytes());
    assert_eq!(r(&mut d, 22, 2), 1);
    // A window past the BAR, or of a silly length, does nothing.
    d.write_config(cap + 8, &0x7fffu32.to_le_bytes());
    d.write_config(cap + 12, &4u32.to_le_bytes());
    assert_eq!(cfg_read(&mut d, cap + 16, 4), 1, "the last value stays");
}

#[test]
fn hostile_bar_accesses_are_harmless() {
    let (mut d, _, _) = device();
    for off in [
        0u64, 3, 21, 55, 56, 0xfff, 0x1000, 0x2fff, 0x3008, 0x4000, 0x6000, 0x7fff,
    ] {
        for len in [1usize, 2, 4, 8] {
            let mut b = [0u8; 8];
            d.read_bar(0, off, &mut b[..len]);
            d.write_bar(0, off, &[0xff; 8][..len]);
        }
    }
    d.read_bar(0, u64::MAX - 1, &mut [0u8; 4]);
    d.write_bar(0, u64::MAX - 1, &[0u8; 4]);
    d.write_bar(0, 0, &[0u8; 16]);
    d.read_bar(1, 0, &mut [0u8; 4]);
    // ISR reads clear it.
    assert_eq!(r(&mut d, 0x1000, 1), 0);
}

#[test]
fn the_driver_sees_a_reset_in_progress_until_the_device_has_done_it() {
    let (mut d, log, _) = device();
    w(&mut d, 20, 1 | 2, 1);
    // The back end takes its time: the reset returns at once, the status stays non-zero.
    log.lock().unwrap().reset_pending = true;
    w(&mut d, 20, 0, 1);
    assert_eq!(log.lock().unwrap().resets, 1);
    assert_eq!(r(&mut d, 20, 1), 1 | 2);
    log.lock().unwrap().reset_pending = false;
    assert_eq!(r(&mut d, 20, 1), 0, "done");
}
