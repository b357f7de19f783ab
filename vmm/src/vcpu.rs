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
            crate::seccomp::enter(crate::seccomp::Kind::Vcpu);
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

/// Serve the port access KVM just exited for. KVM describes string I/O (`rep outsb` and
/// friends) as `count` accesses of `size` bytes in one buffer; kvm-ioctls hands over the buffer
/// but not the access size, so it is read from `kvm_run` and each access dispatched on its own.
fn io_exit(vcpu: &mut VcpuFd, bus: &Bus, port: u16) {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_IO (the caller matched it), so `io` is the union's
    // active field; it is plain data.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size);
    let Some(total) = size
        .checked_mul(io.count as usize)
        .filter(|&t| t > 0 && t <= 4096)
    else {
        return;
    };
    let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
    // SAFETY: KVM put `count * size` bytes (at most a page, checked above) at `data_offset`
    // inside this vCPU's kvm_run mapping, which stays mapped while we hold `vcpu` mutably; no
    // other reference to those bytes exists during this call.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), total) };
    let port = u64::from(port);
    let write = u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_OUT;
    for access in data.chunks_mut(size) {
        let claimed = if write {
            bus.write(port, access)
        } else {
            bus.read(port, access)
        };
        if !claimed {
            unclaimed("port", port, write, access.len());
        }
    }
}

/// Say (at debug level, and only for the first few) that the guest touched an address no
/// device serves: reads got all ones, writes were dropped. Probing firmware does this on
/// purpose; for anything else it is the first clue.
fn unclaimed(space: &str, addr: u64, write: bool, len: usize) {
    static SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if crate::log::debug_enabled() && SEEN.fetch_add(1, Ordering::Relaxed) < 256 {
        let what = if write { "write to" } else { "read of" };
        debug!("Guest {what} unclaimed {space} {addr:#x} ({len} bytes)");
    }
}

fn run_once(id: u32, vcpu: &mut VcpuFd, buses: &Buses) -> Option<MachineEvent> {
    let io_port = match vcpu.run() {
        Ok(VcpuExit::IoIn(port, _)) | Ok(VcpuExit::IoOut(port, _)) => Some(port),
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !buses.mmio.read(addr, data) {
                unclaimed("MMIO", addr, false, data.len());
            }
            None
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            if !buses.mmio.write(addr, data) {
                unclaimed("MMIO", addr, true, data.len());
            }
            None
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
        Ok(VcpuExit::Intr) => None,
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
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
        Err(e) => {
            return Some(MachineEvent::Failed(format!(
                "vCPU {id}: KVM_RUN failed: {e}"
            )));
        }
    };
    if let Some(port) = io_port {
        io_exit(vcpu, &buses.io, port);
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
