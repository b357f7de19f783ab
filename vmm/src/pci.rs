//! The KVM side of PCI: MSI routes and irqfds for MSI-X vectors, ioeventfds for virtio queue
//! notifications, and assembling the PCI bus with its devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use boot::x86_64::layout::{PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START};
use devices::pci::{MsiMessage, MsiRouter, MsiVector, PciBus, PciConfigIo, PciEcam, PciMmioWindow};
use devices::virtio::pci::{BAR0_SIZE, IoEventRegistry, VirtioPci};
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use devices::{Bus, pci};
use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy};
use vmm_sys_util::eventfd::EventFd;

use crate::Error;

/// GSIs below this are the IOAPIC's pins.
const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routing entries per VM is 4096; leave room for the irqchip's own.
const MAX_GSI: u32 = 4095;

/// GSI routing for the VM: the irqchip pins KVM routes by default, plus one MSI route per
/// MSI-X vector. KVM_SET_GSI_ROUTING replaces the whole table, so the table is kept here.
pub struct Interrupts {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    next_gsi: u32,
    irqchip: Vec<kvm_irq_routing_entry>,
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl Interrupts {
    /// The default routes: GSIs 0-15 to the PICs and 0-23 to the IOAPIC, as KVM sets them up;
    /// with `pc_timer_pin`, GSI 0 (where KVM's PIT injects) reaches IOAPIC pin 2 instead, as on
    /// a PC whose MADT overrides ISA IRQ 0 to GSI 2 (the Q35 platform's).
    pub fn new(vm: Arc<VmFd>, pc_timer_pin: bool) -> Self {
        let mut irqchip = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            match (pc_timer_pin, gsi) {
                (true, 0) => irqchip.push(irqchip_route(0, KVM_IRQCHIP_IOAPIC, 2)),
                // Pin 2 belongs to GSI 0 then; ISA IRQ 2 is the PICs' cascade.
                (true, 2) => {}
                _ => irqchip.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
            }
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                irqchip.push(irqchip_route(gsi, chip, gsi % 8));
            }
        }
        Interrupts {
            vm,
            state: Mutex::new(RoutingState {
                next_gsi: IOAPIC_PINS,
                irqchip,
                msi: BTreeMap::new(),
            }),
        }
    }

    /// `count` MSI vectors, each with a fresh GSI and an irqfd bound to it.
    pub fn allocate(&self, count: usize) -> Result<Vec<MsiVector>, Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut vectors = Vec::with_capacity(count);
        for _ in 0..count {
            let gsi = state.next_gsi;
            if gsi > MAX_GSI {
                return Err(Error::Device("pci", "out of interrupt numbers".into()));
            }
            state.next_gsi += 1;
            let irqfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| Error::Host("eventfd", e))?;
            self.vm
                .register_irqfd(&irqfd, gsi)
                .map_err(|e| Error::Kvm("KVM_IRQFD", e.errno()))?;
            vectors.push(MsiVector { gsi, irqfd });
        }
        Ok(vectors)
    }

    fn commit(&self, state: &RoutingState) -> std::io::Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = state
            .irqchip
            .iter()
            .chain(state.msi.values())
            .copied()
            .collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl MsiRouter for Interrupts {
    fn route(&self, gsi: u32, msg: MsiMessage) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = msg.address as u32;
        e.u.msi.address_hi = (msg.address >> 32) as u32;
        e.u.msi.data = msg.data;
        let old = state.msi.insert(gsi, e);
        let r = self.commit(&state);
        if r.is_err() {
            // Keep the table as KVM has it.
            match old {
                Some(o) => state.msi.insert(gsi, o),
                None => state.msi.remove(&gsi),
            };
        }
        r
    }
}

/// Queue notifications bound with KVM_IOEVENTFD: a guest write to the address signals the
/// eventfd inside KVM, without an exit to userspace.
pub struct IoEvents(pub Arc<VmFd>);

impl IoEventRegistry for IoEvents {
    fn register(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Put each of `devices` on `bus` as virtio-pci, with MSI-X vectors and queue ioeventfds;
/// returns their device numbers in order. BARs start out in the direct platform's window; on
/// the firmware platform the firmware moves them, and their handlers follow.
pub fn add_virtio(
    bus: &mut PciBus,
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
    pc_timer_pin: bool,
) -> Result<Vec<u8>, Error> {
    let dev_err = |e: String| Error::Device("pci", e);
    let interrupts = Arc::new(Interrupts::new(vm.clone(), pc_timer_pin));
    if pc_timer_pin {
        let state = interrupts.state.lock().unwrap_or_else(|p| p.into_inner());
        interrupts.commit(&state).map_err(|e| {
            Error::Kvm("KVM_SET_GSI_ROUTING", e.raw_os_error().unwrap_or(libc::EIO))
        })?;
    }
    let ioevents: Arc<dyn IoEventRegistry> = Arc::new(IoEvents(vm.clone()));
    let mut bars =
        AddressAllocator::new(PCI_MMIO_START, PCI_MMIO_SIZE).map_err(|e| dev_err(e.to_string()))?;
    let mut slots = Vec::with_capacity(devices.len());
    for device in devices {
        let range = bars
            .allocate(BAR0_SIZE, BAR0_SIZE, AllocPolicy::FirstMatch)
            .map_err(|_| dev_err(pci::PciError::NoBarSpace(BAR0_SIZE).to_string()))?;
        // One vector per queue plus one for configuration changes.
        let vectors = interrupts.allocate(device.queue_max_sizes().len() + 1)?;
        let dev = VirtioPci::new(
            device,
            mem.clone(),
            range.start(),
            vectors,
            interrupts.clone(),
            ioevents.clone(),
        )
        .map_err(|e| dev_err(e.to_string()))?;
        slots.push(
            bus.add(Arc::new(Mutex::new(dev)))
                .map_err(|e| dev_err(e.to_string()))?,
        );
    }
    Ok(slots)
}

/// Build the direct platform's PCI bus with `devices` (each as virtio-pci), and attach its
/// config mechanisms and memory window to the buses.
pub fn build(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
    io: &mut Bus,
    mmio: &mut Bus,
) -> Result<Arc<PciBus>, Error> {
    let dev_err = |e: String| Error::Device("pci", e);
    let mut bus = PciBus::new();
    add_virtio(&mut bus, vm, mem, devices, false)?;
    let bus = Arc::new(bus);
    let attach_err = |e: devices::bus::BusError| dev_err(e.to_string());
    io.insert(
        pci::CONFIG_IO_PORT,
        pci::CONFIG_IO_PORTS,
        Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
    )
    .map_err(attach_err)?;
    mmio.insert(
        PCI_ECAM_START,
        pci::ECAM_BUS0_SIZE,
        Arc::new(Mutex::new(PciEcam::new(bus.clone()))),
    )
    .map_err(attach_err)?;
    mmio.insert(
        PCI_MMIO_START,
        PCI_MMIO_SIZE,
        Arc::new(Mutex::new(PciMmioWindow::new(bus.clone(), PCI_MMIO_START))),
    )
    .map_err(attach_err)?;
    Ok(bus)
}
