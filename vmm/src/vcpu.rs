//! vCPU threads: run the guest, dispatch its port and MMIO exits to the buses, and report
//! anything that ends or resets the machine.
//!
//! A vCPU thread never waits for anything but KVM_RUN. To stop it, the VMM sets `stop` and
//! sends the thread a real-time signal, whose (empty) handler makes KVM_RUN return EINTR; the
//! kick is repeated until the thread has gone, which covers a signal landing just before the
//! thread re-entered the guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::Bus;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, register_signal_handler};

/// Why the machine must stop: the first reported event wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine (reboot or triple fault).
    Reset,
    /// A vCPU failed in a way the guest cannot recover from.
    Failed(String),
}

/// Where vCPUs and devices report a [`MachineEvent`]; wakes the VMM's event loop.
#[derive(Debug)]
pub struct EventSlot {
    event: Mutex<Option<MachineEvent>>,
    /// Signalled when an event is stored.
    pub wake: EventFd,
}

impl EventSlot {
    /// An empty slot.
    pub fn new() -> std::io::Result<Self> {
        Ok(EventSlot {
            event: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Record `event` unless one is already recorded, and wake the event loop.
    pub fn report(&self, event: MachineEvent) {
        let mut slot = self.event.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(event);
        }
        drop(slot);
        let _ = self.wake.write(1);
    }

    /// The recorded event, if any.
    pub fn take(&self) -> Option<MachineEvent> {
        self.event.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the kick signal's handler once per process.
pub fn install_kick_handler() -> Result<(), crate::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), noop_handler).map_err(|e| e.errno()))
        .map_err(crate::Error::Thread)
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

/// The buses a vCPU dispatches to.
#[derive(Debug, Clone)]
pub struct Buses {
    /// Port I/O.
    pub io: Arc<Bus>,
    /// MMIO outside guest RAM and the in-kernel devices.
    pub mmio: Arc<Bus>,
}

/// Start a thread running `vcpu` until `stop` is set or the machine stops.
pub fn spawn(
    id: u32,
    mut vcpu: VcpuFd,
    buses: Buses,
    stop: Arc<AtomicBool>,
    events: Arc<EventSlot>,
) -> Result<VcpuThread, crate::Error> {
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Some(event) = run_once(id, &mut vcpu, &buses) {
                    events.report(event);
                    break;
                }
            }
        })
        .map_err(|e| crate::Error::Thread(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
    Ok(VcpuThread { handle })
}

/// Dispatch a port access. String I/O (`rep outsb` and friends) arrives as one buffer of
/// `count * size` bytes; anything but a single 1, 2 or 4 byte access is split into bytes.
fn io_access(bus: &Bus, port: u16, data: &mut [u8], write: bool) {
    let port = u64::from(port);
    if matches!(data.len(), 1 | 2 | 4) {
        if write {
            bus.write(port, data);
        } else {
            bus.read(port, data);
        }
        return;
    }
    for byte in data.chunks_mut(1) {
        if write {
            bus.write(port, byte);
        } else {
            bus.read(port, byte);
        }
    }
}

fn run_once(id: u32, vcpu: &mut VcpuFd, buses: &Buses) -> Option<MachineEvent> {
    match vcpu.run() {
        Ok(VcpuExit::IoIn(port, data)) => io_access(&buses.io, port, data, false),
        Ok(VcpuExit::IoOut(port, data)) => {
            // The buffer is the guest's output; dispatch needs a mutable slice only for reads.
            let mut copy = [0u8; 8];
            if data.len() <= copy.len() {
                copy[..data.len()].copy_from_slice(data);
                io_access(&buses.io, port, &mut copy[..data.len()], true);
            } else {
                for b in data.iter() {
                    buses.io.write(u64::from(port), &[*b]);
                }
            }
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            buses.mmio.read(addr, data);
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            buses.mmio.write(addr, data);
        }
        // A triple fault: the CPU resets, and so does the machine, as on a PC.
        Ok(VcpuExit::Shutdown) => return Some(MachineEvent::Reset),
        Ok(VcpuExit::SystemEvent(kind, _)) => {
            return Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => MachineEvent::PowerOff,
                KVM_SYSTEM_EVENT_RESET => MachineEvent::Reset,
                KVM_SYSTEM_EVENT_CRASH => MachineEvent::Failed(format!("vCPU {id}: guest crashed")),
                other => MachineEvent::Failed(format!("vCPU {id}: unknown system event {other}")),
            });
        }
        Ok(VcpuExit::Intr) => {}
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            return Some(MachineEvent::Failed(format!(
                "vCPU {id}: KVM failed to enter the guest (hardware reason {reason:#x} on CPU {cpu})"
            )));
        }
        Ok(VcpuExit::InternalError) => {
            return Some(MachineEvent::Failed(format!(
                "vCPU {id}: KVM internal error"
            )));
        }
        Ok(other) => {
            return Some(MachineEvent::Failed(format!(
                "vCPU {id}: unexpected exit {other:?}"
            )));
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
        Err(e) => {
            return Some(MachineEvent::Failed(format!(
                "vCPU {id}: KVM_RUN failed: {e}"
            )));
        }
    }
    None
}

/// Stop all vCPU threads and wait for them.
pub fn stop_all(threads: Vec<VcpuThread>, stop: &AtomicBool) {
    stop.store(true, Ordering::Release);
    for t in threads {
        while !t.handle.is_finished() {
            // The thread may be inside KVM_RUN; the signal makes it come out.
            let _ = t.handle.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = t.handle.join();
    }
}
