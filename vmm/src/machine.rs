//! One boot of the VM: KVM VM, memory, devices, boot image and vCPU threads.
//!
//! A guest reset throws the whole machine away and builds a new one from the same
//! [`MachineSpec`]: the cheapest way to get every device and vCPU back to its power-on state.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use boot::MemoryLayout;
use boot::x86_64::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
use devices::legacy::cmos::{CMOS_PORT, CMOS_PORTS};
use devices::legacy::serial::{COM1_IRQ, COM1_PORT, UART_PORTS};
use devices::legacy::{Cmos, SerialConsole};
use devices::pci::PciBus;
use devices::virtio::VirtioDevice;
use devices::virtio::block::{Block, DiskImage, ID_BYTES};
use devices::virtio::console::{Console as VirtioConsole, ConsolePort};
use devices::virtio::fs::VhostUserFs;
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{VhostHandle, Vsock};
use devices::virtio::vsock_user::VsockUser;
use devices::{Bus, BusDevice, Contributions, GuestRequest, RequestSink};
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::vcpu::{self, Buses, EventSlot, MachineEvent, VcpuThread};
use crate::x86_64::{cpuid, regs};
use crate::{Error, memory};

/// What every boot of the machine is built from.
#[derive(Debug)]
pub struct MachineSpec {
    /// vCPU count.
    pub vcpus: u32,
    /// RAM in bytes.
    pub mem_bytes: u64,
    /// How the machine boots: the platform and what it starts.
    pub boot: BootSpec,
    /// What guest RAM is made of.
    pub memory: memory::Backing,
    /// Disks, in the order the guest sees them (the first is `vda`).
    pub disks: Vec<DiskSpec>,
    /// Machine name: the SMBIOS system serial number.
    pub name: String,
    /// SMBIOS system UUID.
    pub uuid: [u8; 16],
    /// SMBIOS type 11 strings.
    pub oem_strings: Vec<String>,
    /// The guest's vsock device.
    pub vsock: Option<VsockSpec>,
    /// virtio-fs devices, each connected to its virtiofsd for the whole run; each boot gets
    /// devices sharing those connections.
    pub fs: Vec<Arc<VhostUserFs>>,
    /// The guest's NIC, its host side set up for the whole run.
    pub net: Option<crate::net::NetSetup>,
    /// The run's TPM; each boot gets a fresh CRB register file in front of it.
    pub tpm: Option<Arc<devices::tpm::Tpm>>,
    /// The guest's console device.
    pub console: ConsoleSpec,
    /// The graphical console's devices (`--console=gui`): virtio-gpu, keyboard and tablet.
    pub gui: Option<crate::gui::GuiDevices>,
    /// End the run when the firmware says it found nothing to boot (a firmware boot where
    /// nobody can press the key it then waits for).
    pub watch_boot_failure: bool,
}

/// Which device is the guest's console. COM1 is there in every case (a guest may print to it
/// before its virtio-console driver has loaded: `earlycon`, `earlyprintk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleSpec {
    /// virtio-console (the last PCI function): typed input goes there.
    Virtio,
    /// COM1: typed input goes there.
    Serial,
    /// No console device and no input; COM1's output is dropped.
    Headless,
    /// The window is the console (`--console=gui`): no console device, COM1's output is
    /// printed, no typed input.
    Gui,
}

/// Where the user's typed input goes.
#[derive(Debug, Clone)]
pub enum ConsoleInput {
    /// COM1's receive FIFO.
    Serial(Arc<Mutex<SerialConsole>>),
    /// The virtio-console port.
    Virtio(Arc<ConsolePort>),
    /// Nowhere (headless).
    None,
}

impl ConsoleInput {
    /// Queue `input` as far as there is room; how many bytes were taken.
    pub fn enqueue(&self, input: &[u8]) -> usize {
        match self {
            ConsoleInput::Serial(s) => s.lock().unwrap_or_else(|p| p.into_inner()).enqueue(input),
            ConsoleInput::Virtio(p) => p.enqueue(input),
            ConsoleInput::None => input.len(),
        }
    }
}

/// The two boot paths, each with its own platform.
#[derive(Debug, Clone)]
pub enum BootSpec {
    /// rvmspawn loads the kernel itself and starts it at its entry point, on a minimal
    /// hardware-reduced ACPI platform ([`crate::direct`]).
    Direct(crate::direct::DirectBoot),
    /// UEFI firmware boots from the reset vector on the Q35 platform ([`crate::q35`]).
    Firmware(crate::q35::Firmware),
}

/// Which vsock device the guest gets, kept for the whole run.
#[derive(Debug, Clone)]
pub enum VsockSpec {
    /// The vhost-vsock device (its CID already set) and the guest's CID.
    Vhost(Arc<std::fs::File>, u64),
    /// The userspace device; each boot gets a device sharing its host side.
    User(Arc<VsockUser>),
}

/// A disk: the image, opened and locked once for the VM's whole life, and its serial.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The open image.
    pub image: Arc<DiskImage>,
    /// What GET_ID returns.
    pub serial: [u8; ID_BYTES],
}

/// A built, running machine.
pub struct Machine {
    /// The ACPI power button ([`Machine::press_power_button`]).
    power_button: Arc<dyn devices::PowerButton>,
    // Fields drop in order: the PCI devices (whose threads use guest memory) go before the VM
    // and the RAM.
    _pci: Arc<PciBus>,
    // What the platform's devices and memory slots use (firmware flash mappings).
    _platform: Box<dyn std::any::Any + Send>,
    // Kept alive for as long as the vCPUs run: the VM owns the memory slots and irqfds.
    _vm: Arc<VmFd>,
    /// Leaked instead of dropped when a vCPU could not be stopped: it may still run the guest.
    _ram: Option<memory::GuestRam>,
    /// Where the user's input goes.
    pub input: ConsoleInput,
    /// Signalled when the guest has taken all queued input.
    pub input_drained: EventFd,
    /// Power-off, reset and failure reports.
    pub events: Arc<EventSlot>,
    stop: Arc<AtomicBool>,
    threads: Vec<VcpuThread>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.threads.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm(what, e.errno())
}

pub(crate) fn host_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Host(what, e)
}

/// Put `dev` on `bus` at `base..base + len`.
pub(crate) fn attach(
    bus: &mut Bus,
    name: &'static str,
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
) -> Result<(), Error> {
    bus.insert(base, len, dev)
        .map_err(|e| Error::Device(name, e.to_string()))
}

impl Machine {
    /// Build the machine and start its vCPUs.
    pub fn build(
        kvm: &Kvm,
        spec: &MachineSpec,
        console: crate::console::ConsoleSink,
        window: Option<(u16, u16)>,
    ) -> Result<Machine, Error> {
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        crate::log::phase("VM created");
        vm.set_tss_address(KVM_TSS_START as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;

        let layout = match &spec.boot {
            BootSpec::Direct(_) => MemoryLayout::new(spec.mem_bytes),
            BootSpec::Firmware(_) => MemoryLayout::q35(spec.mem_bytes),
        };
        let ram = memory::create(&layout, spec.memory)?;
        // A firmware that needs SMM gets TSEG at the top of RAM below 4 GiB, out of the
        // devices' reach (`memory::without`).
        let tseg = match &spec.boot {
            BootSpec::Firmware(f) if f.smm => Some(memory::TsegRange {
                start: layout.low_ram_end().saturating_sub(crate::q35::TSEG_BYTES),
                len: crate::q35::TSEG_BYTES,
            }),
            _ => None,
        };
        let tseg_region = memory::register(&vm, &ram.mem, tseg)?;
        let device_view = tseg.map(|t| memory::without(&ram.mem, t)).transpose()?;
        let mem = device_view.as_ref().unwrap_or(&ram.mem);
        crate::log::phase("memory mapped");
        // Memory first, the in-kernel IRQCHIP after: KVM_SET_USER_MEMORY_REGION on a VM that has
        // an IRQCHIP already waited 7 ms in KVM, before it 0.2 ms (scripts/bench-tiny.sh); that
        // wait then comes with the VM's destruction, off the path to the exit (`teardown`).
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        cpuid::disable_pmu(&vm)?;
        // The PIT only where something uses it: the firmware's platform (OVMF and boot loaders
        // may program it). On the direct path nothing does: the hardware-reduced ACPI platform
        // has no legacy timer for Linux to set up, which reads the TSC's rate from kvm-clock.
        // An in-kernel PIT costs KVM a timer thread, and destroying the VM took 27 ms with it
        // and 14 ms without it (scripts/bench-tiny.sh).
        if let BootSpec::Firmware(_) = spec.boot {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }
        crate::log::phase("in-kernel devices created");
        let vcpus_u8 = u8::try_from(spec.vcpus).map_err(|_| Error::TooManyVcpus {
            requested: spec.vcpus,
            max: crate::MAX_VCPUS,
        })?;
        let smbios = boot::SmbiosInfo {
            uuid: spec.uuid,
            vcpus: spec.vcpus,
            system_serial: Some(&spec.name),
            oem_strings: &spec.oem_strings,
        };

        let events = Arc::new(EventSlot::new().map_err(host_err("eventfd"))?);
        let sink: RequestSink = {
            let events = events.clone();
            Arc::new(move |r| {
                events.report(match r {
                    GuestRequest::PowerOff => MachineEvent::PowerOff,
                    GuestRequest::Reset => MachineEvent::Reset,
                })
            })
        };

        let new_eventfd =
            || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(host_err("eventfd"));
        let serial_irq = new_eventfd()?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let input_drained = new_eventfd()?;
        let mut uart_out: Box<dyn std::io::Write + Send> = match spec.console {
            ConsoleSpec::Headless => Box::new(std::io::sink()),
            ConsoleSpec::Virtio | ConsoleSpec::Serial | ConsoleSpec::Gui => {
                Box::new(console.clone())
            }
        };
        if spec.watch_boot_failure {
            uart_out = Box::new(crate::firmware_watch::BootFailureWatch::new(
                uart_out,
                events.clone(),
            ));
        }
        let serial = SerialConsole::new(
            serial_irq,
            input_drained.try_clone().map_err(host_err("eventfd"))?,
            uart_out,
        );
        let mut rtc = Cmos::new();
        rtc.set_memory_size(
            layout.low_ram_end(),
            layout.ram[1..].iter().map(|r| r.size).sum(),
        );
        // The registration list: every device that describes itself in the ACPI tables or
        // fw_cfg (`devices::AcpiDevice`), in DSDT order. A new device is one entry here.
        let crb = spec.tpm.as_ref().map(|t| t.crb());
        let mut acpi: Vec<&dyn devices::AcpiDevice> = vec![&serial, &rtc];
        if let Some(crb) = &crb {
            acpi.push(crb);
        }
        let contributions = Contributions::collect(&acpi);
        let serial = Arc::new(Mutex::new(serial));

        let mut io = Bus::new();
        let mut mmio = Bus::new();
        attach(&mut io, "serial", COM1_PORT, UART_PORTS, serial.clone())?;
        attach(
            &mut io,
            "rtc",
            CMOS_PORT,
            CMOS_PORTS,
            Arc::new(Mutex::new(rtc)),
        )?;
        if let Some(crb) = crb {
            use devices::tpm::{CRB_BASE, CRB_SIZE};
            // The page the direct boot's e820 map reserves.
            const {
                assert!(
                    CRB_BASE == boot::x86_64::layout::TPM_CRB_START
                        && CRB_SIZE == boot::x86_64::layout::TPM_CRB_SIZE
                )
            };
            attach(
                &mut mmio,
                "tpm",
                CRB_BASE,
                CRB_SIZE,
                Arc::new(Mutex::new(crb)),
            )?;
        }
        let queues = spec.vcpus as usize;
        let mut virtio: Vec<Box<dyn VirtioDevice>> = spec
            .disks
            .iter()
            .map(|d| {
                Box::new(Block::new(d.image.clone(), d.serial, queues)) as Box<dyn VirtioDevice>
            })
            .collect();
        virtio.push(Box::new(Rng::new()));
        match &spec.vsock {
            Some(VsockSpec::Vhost(file, cid)) => {
                let vsock_err =
                    |e: devices::virtio::vsock::VsockError| Error::Vsock(e.to_string(), e.errno());
                let file = file.try_clone().map_err(host_err("vhost-vsock"))?;
                let handle = VhostHandle::new(file, mem.clone()).map_err(vsock_err)?;
                virtio.push(Box::new(Vsock::new(handle, *cid).map_err(vsock_err)?));
            }
            Some(VsockSpec::User(device)) => virtio.push(Box::new(device.share())),
            None => {}
        }
        for fs in &spec.fs {
            virtio.push(Box::new(fs.share()));
        }
        match &spec.net {
            Some(crate::net::NetSetup::Vhost { vhost, tap, mac }) => {
                let vhost = vhost.try_clone().map_err(host_err("vhost-net"))?;
                let taps = tap.clone_fds().map_err(host_err("TAP"))?;
                let device =
                    devices::virtio::net::vhost::VhostNet::new(vhost, taps, *mac, mem.clone())
                        .map_err(|e| Error::Network(format!("vhost-net: {e}"), e.errno()))?;
                virtio.push(Box::new(device));
            }
            Some(crate::net::NetSetup::User { backends, mac, .. }) => {
                let device = devices::virtio::net::Net::new(*mac, backends.clone())
                    .map_err(|e| Error::Network(format!("virtio-net: {e}"), e.errno()))?;
                virtio.push(Box::new(device));
            }
            None => {}
        }
        if let Some(gui) = &spec.gui {
            use devices::virtio::input::{Input, InputKind};
            virtio.push(Box::new(devices::virtio::gpu::Gpu::new(gui.screen.clone())));
            virtio.push(Box::new(Input::new(
                InputKind::Keyboard,
                gui.keyboard.clone(),
            )));
            virtio.push(Box::new(Input::new(InputKind::Tablet, gui.tablet.clone())));
        }
        let input = match spec.console {
            ConsoleSpec::Virtio => {
                let port = Arc::new(
                    ConsolePort::new(
                        input_drained.try_clone().map_err(host_err("eventfd"))?,
                        window,
                    )
                    .map_err(host_err("eventfd"))?,
                );
                // Last, so that no other function's PCI slot (and a NIC's name) depends on it.
                virtio.push(Box::new(VirtioConsole::new(
                    port.clone(),
                    Box::new(console),
                )));
                ConsoleInput::Virtio(port)
            }
            ConsoleSpec::Serial => ConsoleInput::Serial(serial.clone()),
            ConsoleSpec::Headless | ConsoleSpec::Gui => ConsoleInput::None,
        };
        let ctx = crate::platform::Context {
            vm: &vm,
            mem,
            layout: &layout,
            vcpus: vcpus_u8,
            smbios: &smbios,
            sink,
            contributions,
            tseg: tseg_region,
        };
        let platform = match &spec.boot {
            BootSpec::Direct(d) => crate::direct::build(&ctx, d, virtio, &mut io, &mut mmio)?,
            BootSpec::Firmware(f) => crate::q35::build(&ctx, f, virtio, &mut io, &mut mmio)?,
        };
        let buses = Buses {
            io: Arc::new(io),
            mmio: Arc::new(mmio),
        };

        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut fds = Vec::with_capacity(spec.vcpus as usize);
        for id in 0..spec.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu.set_cpuid2(&cpuid::for_vcpu(&supported, id, spec.vcpus))
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            match platform.entry {
                // Firmware starts from KVM's power-on state, the BSP at the reset vector.
                None => regs::setup_lint(&vcpu)?,
                Some(entry) => {
                    regs::setup_common(&vcpu)?;
                    if id == 0 {
                        regs::setup_boot_cpu(&vcpu, entry)?;
                    }
                }
            }
            fds.push(vcpu);
        }

        crate::log::phase("devices and vCPUs set up");
        vcpu::install_kick_handler()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(fds.len());
        for (id, fd) in fds.into_iter().enumerate() {
            match vcpu::spawn(id as u32, fd, buses.clone(), stop.clone(), events.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    if !vcpu::stop_all(threads, &stop) {
                        std::mem::forget(ram);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Machine {
            power_button: platform.power_button,
            _pci: platform.pci,
            _platform: platform.resources,
            _vm: vm,
            _ram: Some(ram),
            input,
            input_drained,
            events,
            stop,
            threads,
        })
    }

    /// Press the machine's ACPI power button: the guest's OS decides what to do (systemd
    /// powers off cleanly; a guest without an ACPI handler does nothing).
    pub fn press_power_button(&self) {
        self.power_button.press();
    }

    /// Stop every vCPU and release the machine; whether every vCPU stopped (a vCPU that did
    /// not is left to the process's exit, and the guest's memory with it).
    pub fn stop(mut self) -> bool {
        self.stop_vcpus()
    }

    /// Stop every vCPU and release the machine at the end of the run: as [`Machine::stop`], but
    /// the VM's destruction is left to a short-lived child ([`crate::teardown`]), so rvmspawn can
    /// exit without waiting for it.
    pub fn finish(mut self) -> bool {
        let all = self.stop_vcpus();
        // A vCPU that did not stop keeps the VM and its memory: nothing to hand over then.
        let handoff = if all {
            crate::teardown::hand_off(self._vm.as_raw_fd())
        } else {
            None
        };
        crate::log::phase("VM handed off");
        // Our references go first (the VM's descriptor closes at no cost: the child holds it)...
        drop(self);
        // ...then the child may destroy the VM.
        drop(handoff);
        all
    }

    fn stop_vcpus(&mut self) -> bool {
        if self.threads.is_empty() {
            return true;
        }
        let all = vcpu::stop_all(std::mem::take(&mut self.threads), &self.stop);
        crate::log::phase("vCPUs stopped");
        if !all {
            // The vCPU left running may still enter the guest: its memory must stay mapped.
            std::mem::forget(self._ram.take());
        }
        all
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // vCPUs first: they may be inside a device; then the fields drop in order.
        self.stop_vcpus();
    }
}
