//! A thread that serves one queue: it sleeps until the driver notifies the queue (KVM signals
//! the ioeventfd without leaving the guest), runs the device's handler, and exits when the
//! device is reset or dropped.
//!
//! Stopping a worker is bounded: a device reset runs on a vCPU thread (the driver's status
//! write) and a machine's teardown on the main thread, and neither may wait for a thread that
//! is inside a long host I/O. The worker is told to stop and waited for at most
//! [`STOP_TIMEOUT`]; a worker still busy then is reported and detached. It keeps what it
//! uses alive (guest memory and the back end are reference-counted), finishes the request it
//! is in, and ends at its next look at the stop signal, or with the process.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMemoryMmap, Interrupt};

/// How long dropping a [`QueueWorker`] waits for its thread.
pub const STOP_TIMEOUT: Duration = Duration::from_millis(500);

/// A running queue thread; dropping it stops the thread and joins it, waiting at most
/// [`STOP_TIMEOUT`].
#[derive(Debug)]
pub struct QueueWorker {
    kill: EventFd,
    handle: Option<JoinHandle<()>>,
    /// Disconnected when the thread's body has returned (its sender is dropped).
    done: Receiver<()>,
}

impl QueueWorker {
    /// Start a thread that calls `handler` once at start and then after every notification.
    /// When `handler` returns false the queue is broken: the thread stops serving it and only
    /// waits to be stopped.
    pub fn spawn<F>(name: String, notify: EventFd, mut handler: F) -> io::Result<QueueWorker>
    where
        F: FnMut() -> bool + Send + 'static,
    {
        QueueWorker::spawn_loop(name, move |thread_kill| {
            let mut serving = handler();
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: thread_kill.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: notify.as_raw_fd(),
                        events: if serving { libc::POLLIN } else { 0 },
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is a valid array of two pollfd structs for the whole call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                if fds[0].revents != 0 {
                    return;
                }
                if fds[1].revents & libc::POLLIN != 0 {
                    // Several notifications collapse into one counter; one pass serves them all.
                    let _ = notify.read();
                    serving = handler();
                }
            }
        })
    }

    /// Start a thread running `body`, which must return once the eventfd it is given becomes
    /// readable (dropping the worker signals it), for a thread that waits on more than one
    /// queue notification (virtio-net's receive thread also waits on its back end).
    pub fn spawn_loop<F>(name: String, body: F) -> io::Result<QueueWorker>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let kill = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let thread_kill = kill.try_clone()?;
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            // Dropped last, once `body` and everything it captured are gone.
            let _done: Sender<()> = done_tx;
            crate::thread::started(crate::thread::ThreadKind::QueueWorker);
            body(thread_kill)
        })?;
        Ok(QueueWorker {
            kill,
            handle: Some(handle),
            done,
        })
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        let _ = self.kill.write(1);
        let Some(h) = self.handle.take() else {
            return;
        };
        match self.done.recv_timeout(STOP_TIMEOUT) {
            Err(RecvTimeoutError::Timeout) => {
                let name = h.thread().name().unwrap_or("a queue thread").to_owned();
                crate::report(&format!(
                    "{name} did not stop within {STOP_TIMEOUT:?} (inside a long host I/O?); \
                     leaving it to finish on its own."
                ));
                // Dropping the handle detaches the thread.
            }
            // Nothing is ever sent: the body has returned.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = h.join();
            }
        }
    }
}

/// Wait, in a [`QueueWorker::spawn_loop`] body, until the stop eventfd `kill` or one of the
/// watched `fds` is readable (an fd paired with `false` is not watched: a broken queue). On
/// return `ready[i]` says whether `fds[i]` is readable; the result is false when the thread is
/// to stop (`kill` signalled, or `poll` failed). `poll` is in the queue workers' seccomp list;
/// epoll is not. At most [`MAX_WAIT_FDS`] fds are watched (more is a device bug: it stops). No
/// allocation: this runs at every notification.
pub fn wait_ready(kill: &EventFd, fds: &[(std::os::fd::RawFd, bool)], ready: &mut [bool]) -> bool {
    const IDLE: libc::pollfd = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    if fds.len() > MAX_WAIT_FDS || ready.len() < fds.len() {
        return false;
    }
    let mut all = [IDLE; MAX_WAIT_FDS + 1];
    let pfds = &mut all[..fds.len() + 1];
    pfds[0] = libc::pollfd {
        fd: kill.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    for (p, &(fd, watched)) in pfds[1..].iter_mut().zip(fds) {
        *p = libc::pollfd {
            fd,
            events: if watched { libc::POLLIN } else { 0 },
            revents: 0,
        };
    }
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs for the whole call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
    if pfds[0].revents != 0 {
        return false;
    }
    for (r, p) in ready.iter_mut().zip(&pfds[1..]) {
        *r = p.revents & libc::POLLIN != 0;
    }
    true
}

/// Most queue fds [`wait_ready`] watches at once.
pub const MAX_WAIT_FDS: usize = 4;

/// Drain a queue: hand every available chain to `process`, return it to the used ring with the
/// length `process` wrote, and interrupt the driver when it asked for it. Returns false when the
/// driver broke the ring (the device then asks for a reset and serves the queue no more).
pub fn serve_queue<F>(
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn Interrupt,
    index: u16,
    mut process: F,
) -> bool
where
    F: FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut used_any = false;
    let ok = (|| -> Result<(), virtio_queue::Error> {
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.iter(mem)?.next() {
                let head = chain.head_index();
                let len = process(mem, chain);
                queue.add_used(mem, head, len)?;
                used_any = true;
            }
            // Re-enabling tells whether more arrived meanwhile; if so, go round again.
            if !queue.enable_notification(mem)? {
                return Ok(());
            }
        }
    })();
    if ok.is_err() {
        interrupt.needs_reset();
        return false;
    }
    if used_any && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.queue(index);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn runs_on_notification_and_stops_on_drop() {
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let w = QueueWorker::spawn("test".into(), notify.try_clone().unwrap(), move || {
            c.fetch_add(1, Ordering::SeqCst) < 1
        })
        .unwrap();
        let wait_for = |n: u32| {
            let t = Instant::now();
            while calls.load(Ordering::SeqCst) < n && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            calls.load(Ordering::SeqCst)
        };
        assert_eq!(wait_for(1), 1);
        notify.write(1).unwrap();
        assert_eq!(wait_for(2), 2);
        // The handler said the queue is broken: further notifications are not served.
        notify.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        drop(w);
    }

    #[test]
    fn a_worker_inside_a_long_operation_is_left_after_the_timeout() {
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let release = Arc::new(std::sync::Barrier::new(2));
        let r = release.clone();
        let w = QueueWorker::spawn("test-long".into(), notify, move || {
            let _ = started_tx.send(());
            // A host I/O that outlasts the stop: it ends only when the test says so.
            r.wait();
            true
        })
        .unwrap();
        started.recv().unwrap();
        let t0 = Instant::now();
        drop(w);
        let took = t0.elapsed();
        assert!(took >= STOP_TIMEOUT, "{took:?}");
        assert!(took < STOP_TIMEOUT + Duration::from_secs(2), "{took:?}");
        release.wait();
    }
}
