//! vCPU threads: run the guest, dispatch its port and MMIO exits to the buses, and report
//! anything that ends or resets the machine.
//!
//! A vCPU thread never waits for anything but KVM_RUN. To stop it, the VMM sets `stop` and
//! sends the thread a real-time signal once. The signal's handler runs on the vCPU thread and
//! sets `immediate_exit` in that vCPU's `kvm_run`: a thread inside KVM_RUN comes out with EINTR
//! (a signal always forces the guest out, interrupts disabled or not), and a thread that was
//! between its check of `stop` and KVM_RUN when the signal came gets EINTR from KVM_RUN at once
//! instead of entering the guest. The VMM waits for the threads at most [`STOP_TIMEOUT`]; a
//! thread still busy then (inside a device access that does not end) is reported and left to
//! the process's exit, never waited for forever.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, register_signal_handler};

/// How long stopping a machine waits for its vCPU threads, all together.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the machine must stop: the first reported event wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine (reboot or triple fault).
    Reset,
    /// A vCPU failed in a way the guest cannot recover from.
    Failed(String),
    /// The firmware gave up: it found nothing it could boot (`firmware_watch`).
    NothingToBoot,
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

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, while it runs one; null otherwise.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick's handler: make this thread's next (or current) KVM_RUN return at once. Only
/// async-signal-safe work: a thread-local read (constant-initialised, no destructor) and one
/// store.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own vCPU mapping, set while its VcpuFd
            // lives and cleared before the VcpuFd is dropped (see `RunPointer`); this thread
            // was interrupted, so nothing else on it is writing this byte now, and KVM reads
            // it only at the next KVM_RUN.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Install the kick signal's handler once per process.
pub fn install_kick_handler() -> Result<(), crate::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno()))
        .map_err(crate::Error::Thread)
}

/// Publishes a vCPU's `kvm_run` to the kick's handler for as long as it lives; must be dropped
/// before the vCPU.
struct RunPointer;

impl RunPointer {
    fn set(vcpu: &mut VcpuFd) -> RunPointer {
        let run: *mut kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|r| r.set(run));
        RunPointer
    }
}

impl Drop for RunPointer {
    fn drop(&mut self) {
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }
}

/// Set when a vCPU thread has ended.
#[derive(Debug, Default)]
struct Finished {
    done: Mutex<bool>,
    changed: Condvar,
}

impl Finished {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Wait until the thread has ended or `deadline` passed; whether it ended.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            done = self
                .changed
                .wait_timeout(done, left)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
        true
    }
}

/// Marks the thread finished when the thread's body ends, however it ends.
struct FinishOnDrop(Arc<Finished>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    id: u32,
    handle: JoinHandle<()>,
    finished: Arc<Finished>,
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
    vcpu: VcpuFd,
    buses: Buses,
    stop: Arc<AtomicBool>,
    events: Arc<EventSlot>,
) -> Result<VcpuThread, crate::Error> {
    let finished = Arc::new(Finished::default());
    let finish = FinishOnDrop(finished.clone());
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            crate::seccomp::enter(crate::seccomp::Kind::Vcpu);
            CURRENT.with(|c| c.set(Some(id)));
            let _finish = finish;
            let mut vcpu = vcpu;
            // Dropped before `vcpu`: the handler never sees a pointer into an unmapped run.
            let _run = RunPointer::set(&mut vcpu);
            if id == 0 {
                crate::log::phase("first guest entry");
            }
            while !stop.load(Ordering::Acquire) {
                if let Some(event) = run_once(id, &mut vcpu, &buses) {
                    events.report(event);
                    break;
                }
            }
        })
        .map_err(|e| crate::Error::Thread(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
    Ok(VcpuThread {
        id,
        handle,
        finished,
    })
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

/// The vCPU this thread runs (its APIC ID), for a device that must act on "the current CPU":
/// an SMI the APM port raises without broadcast.
pub fn current() -> Option<u32> {
    CURRENT.with(std::cell::Cell::get)
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

fn run_once(id: u32, vcpu: &mut VcpuFd, buses: &Buses) -> Option<MachineEvent> {
    let run: *const kvm_run = vcpu.get_kvm_run();
    let exit = vcpu.run();
    // Whether an MMIO access comes from SMM, for the devices (the variable store takes writes
    // only from SMM; no port device asks, so port exits skip this).
    let record_smm = || {
        // SAFETY: `run` is this vCPU's kvm_run mapping, which lives as long as `vcpu`; KVM
        // wrote it before KVM_RUN returned and leaves it alone until the next KVM_RUN.
        // `flags` is plain data, read by value.
        let flags = unsafe { std::ptr::addr_of!((*run).flags).read_volatile() };
        devices::smm::set_access_from_smm(u32::from(flags) & kvm_bindings::KVM_RUN_X86_SMM != 0);
    };
    let io_port = match exit {
        Ok(VcpuExit::IoIn(port, _)) | Ok(VcpuExit::IoOut(port, _)) => Some(port),
        Ok(VcpuExit::MmioRead(addr, data)) => {
            record_smm();
            if !buses.mmio.read(addr, data) {
                unclaimed("MMIO", addr, false, data.len());
            }
            None
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            record_smm();
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

/// Stop all vCPU threads: set `stop`, kick each thread once, and wait for them at most
/// [`STOP_TIMEOUT`] in all. A thread that has not ended by then is reported and left running
/// (the process's exit ends it); returns whether every thread ended.
pub fn stop_all(threads: Vec<VcpuThread>, stop: &AtomicBool) -> bool {
    stop.store(true, Ordering::Release);
    for t in &threads {
        // Inside KVM_RUN, the signal makes it come out; about to enter, immediate_exit does.
        let _ = t.handle.kill(kick_signal());
    }
    wait_all(threads, Instant::now() + STOP_TIMEOUT)
}

/// Join the threads that end before `deadline`; report and detach the others.
fn wait_all(threads: Vec<VcpuThread>, deadline: Instant) -> bool {
    let mut all = true;
    for t in threads {
        if t.finished.wait_until(deadline) {
            let _ = t.handle.join();
        } else {
            all = false;
            status!(
                "vCPU {} did not stop within {:?}; leaving it to the process's exit.",
                t.id,
                STOP_TIMEOUT
            );
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread standing in for a vCPU stuck outside KVM_RUN (in a device access that does
    /// not end): it never looks at `stop`.
    fn stuck(id: u32, release: Arc<AtomicBool>) -> VcpuThread {
        let finished = Arc::new(Finished::default());
        let finish = FinishOnDrop(finished.clone());
        let handle = std::thread::spawn(move || {
            let _finish = finish;
            while !release.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        });
        VcpuThread {
            id,
            handle,
            finished,
        }
    }

    #[test]
    fn a_vcpu_that_does_not_stop_is_left_after_the_timeout() {
        install_kick_handler().unwrap();
        let release = Arc::new(AtomicBool::new(false));
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let all = stop_all(vec![stuck(0, release.clone())], &stop);
        let took = t0.elapsed();
        assert!(!all);
        assert!(stop.load(Ordering::SeqCst));
        assert!(took >= STOP_TIMEOUT, "{took:?}");
        assert!(took < STOP_TIMEOUT + Duration::from_secs(2), "{took:?}");
        release.store(true, Ordering::SeqCst);
    }

    #[test]
    fn vcpus_that_stop_are_joined() {
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(Finished::default());
        let finish = FinishOnDrop(finished.clone());
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let _finish = finish;
            while !s.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(1));
            }
        });
        let t0 = Instant::now();
        assert!(stop_all(
            vec![VcpuThread {
                id: 0,
                handle,
                finished
            }],
            &stop
        ));
        assert!(t0.elapsed() < STOP_TIMEOUT);
    }
}
