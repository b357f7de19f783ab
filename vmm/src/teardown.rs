//! The VM's destruction, off the path to rvmspawn's exit.
//!
//! Closing the last reference to a KVM VM destroys it, and that is KVM's slowest step of a
//! whole run: measured with `scripts/bench-tiny.sh`, 14 ms of a tiny guest's 26 ms from start to
//! exit (the in-kernel IRQCHIP's devices leave KVM's buses one grace period at a time). A
//! process's descriptors are all closed before its parent learns that it exited, so nothing the
//! VMM does in its own process gets that time off its exit status.
//!
//! So at the end of a run [`hand_off`] forks a child that inherits the VM's descriptor, closes
//! every other descriptor it inherited (the terminal and the output pipes, the run directory and
//! its lock, TAP devices, helpers' pidfds), tells the parent so by closing its end of a pipe,
//! then waits until the parent has dropped its own reference and destroys the VM by exiting.
//! The parent goes on at once: it restores the terminal, stops the helpers, removes the run
//! directory and exits while KVM takes the VM apart in the child. The child holds nothing a
//! user or the caller of rvmspawn waits for (no output, no lock, no device), ends within
//! milliseconds, and ends if the parent dies first (its pipe reaches end of file).
//!
//! The child is made with a raw `clone(SIGCHLD)` (a `fork` without glibc's bookkeeping, since
//! the child only makes system calls and exits) and never returns into Rust code that could
//! allocate or take a lock another thread held at the fork.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The parent's side of a handed-off VM: dropping it lets the child destroy the VM. Drop it
/// once the parent's own references to the VM are gone, or the destruction happens in the
/// parent anyway (whichever process closes the last reference pays for it).
#[derive(Debug)]
pub struct HandOff {
    _go: OwnedFd,
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Block until `fd` (a pipe's read end) reaches end of file or fails.
fn wait_for_eof(fd: RawFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            return;
        }
    }
}

/// Close every descriptor but `keep` (which must be sorted and without duplicates).
///
/// # Safety
/// Only for a process that owns no Rust object using the descriptors closed (the child).
unsafe fn close_all_but(keep: &[RawFd]) {
    let mut first: libc::c_uint = 0;
    for &k in keep {
        let k = k as libc::c_uint;
        if k > first {
            // SAFETY: closes descriptors of this process only; see the function's contract.
            unsafe { libc::syscall(libc::SYS_close_range, first, k - 1, 0) };
        }
        first = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
}

/// Fork the child that will destroy the VM behind `vm_fd` once the returned [`HandOff`] is
/// dropped. Returns when the child holds no other descriptor. `None` if no child could be made:
/// the VM is then destroyed where its last reference closes, as without a hand-off.
pub fn hand_off(vm_fd: RawFd) -> Option<HandOff> {
    let (ready_r, ready_w) = pipe().ok()?;
    let (go_r, go_w) = pipe().ok()?;
    let mut keep = [vm_fd, go_r.as_raw_fd()];
    keep.sort_unstable();
    // SAFETY: a fork (clone with only the exit signal; no new stack, so the child runs on a
    // copy of this one). The child below makes only system calls and exits, so what other
    // threads held at the fork (locks, the allocator) does not matter to it.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if pid == 0 {
        // The child. SAFETY: it owns no Rust object that uses a descriptor: it only closes
        // them, waits and exits.
        unsafe {
            close_all_but(&keep);
            wait_for_eof(go_r.as_raw_fd());
            // Closing the VM's descriptor (exit does) destroys the VM here.
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(go_r);
    if pid < 0 {
        debug!(
            "Tearing the VM down in rvmspawn itself: no child for it ({})",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // The child closed its copy of `ready_w` with everything else.
    wait_for_eof(ready_r.as_raw_fd());
    Some(HandOff { _go: go_w })
}
