//! PCI configuration and BAR accesses from a hostile guest: a sequence of port 0xCF8/0xCFC,
//! ECAM and BAR-window accesses against a bus holding a virtio-blk and a virtio-rng device,
//! including whatever feature negotiation, queue setup and activation that amounts to.

#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use devices::pci::{MsiMessage, MsiRouter, MsiVector, PciBus, PciConfigIo, PciEcam, PciMmioWindow};
use devices::virtio::block::{Block, DiskImage, SECTOR_SIZE};
use devices::virtio::pci::{BAR0_SIZE, IoEventRegistry, VirtioPci};
use devices::virtio::rng::Rng;
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

const WINDOW: u64 = 0xc000_0000;

struct Nothing;
impl MsiRouter for Nothing {
    fn route(&self, _: u32, _: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
}
impl IoEventRegistry for Nothing {
    fn register(&self, _: u64, _: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
    fn unregister(&self, _: u64, _: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
}

fn virtio(dev: Box<dyn VirtioDevice>, mem: &GuestMemoryMmap, slot: u64) -> VirtioPci {
    let vectors = (0..dev.queue_max_sizes().len() + 1)
        .map(|i| MsiVector {
            gsi: 24 + i as u32,
            irqfd: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
        })
        .collect();
    VirtioPci::new(
        dev,
        mem.clone(),
        WINDOW + slot * BAR0_SIZE,
        vectors,
        Arc::new(Nothing),
        Arc::new(Nothing),
    )
    .unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // SAFETY: a new anonymous file with a valid name.
    let fd = unsafe { libc::memfd_create(c"fuzz-pci-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is new and owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(64 * SECTOR_SIZE).unwrap();
    let disk = Arc::new(DiskImage::from_file(file, Path::new("f.raw"), false, true).unwrap());
    let mut bus = PciBus::new();
    bus.add(Arc::new(Mutex::new(virtio(
        Box::new(Block::new(disk, [0; 20], 2)),
        &mem,
        0,
    ))))
    .unwrap();
    bus.add(Arc::new(Mutex::new(virtio(Box::new(Rng::new()), &mem, 1))))
        .unwrap();
    let bus = Arc::new(bus);
    let mut io = PciConfigIo::new(bus.clone());
    let mut ecam = PciEcam::new(bus.clone());
    let mut window = PciMmioWindow::new(bus.clone(), WINDOW);

    // Each access: kind, length code, 4 offset bytes, 8 value bytes.
    for op in data.chunks_exact(14) {
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let offset = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]]));
        let value = &op[6..6 + len];
        let mut out = [0u8; 8];
        match op[0] % 6 {
            0 => io.write(offset % 8, value),
            1 => io.read(offset % 8, &mut out[..len]),
            2 => ecam.write(offset % (1 << 20), value),
            3 => ecam.read(offset % (1 << 20), &mut out[..len]),
            4 => window.write(offset % (2 * BAR0_SIZE + 0x1000), value),
            _ => window.read(offset % (2 * BAR0_SIZE + 0x1000), &mut out[..len]),
        }
    }
});
