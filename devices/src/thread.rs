//! The threads the devices start, and a hook through which the VMM confines each one (its
//! seccomp filter) as the first thing the thread does. The devices know nothing of seccomp.

use std::sync::OnceLock;

/// What a device thread does, which decides what it may ask of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A virtio queue worker ([`crate::virtio::worker::QueueWorker`]): virtio-blk, virtio-rng,
    /// virtio-net's transmit, receive and control queues, the vsock event queue.
    QueueWorker,
    /// The userspace vsock device's thread (`vsock_user`).
    VsockUser,
    /// The vhost-user-fs watchdog that shuts a stalled virtiofsd connection down.
    FsWatchdog,
    /// The vhost-user-fs operations thread (activations and resets, which talk to virtiofsd).
    FsOps,
    /// The TPM's thread, which runs the guest's TPM commands against swtpm
    /// ([`crate::tpm::Tpm`]).
    Tpm,
}

static START_HOOK: OnceLock<fn(ThreadKind)> = OnceLock::new();

/// Set the function every device thread calls as its first action. Set once per process;
/// returns false if a hook was already set (the first one stays).
pub fn set_start_hook(hook: fn(ThreadKind)) -> bool {
    START_HOOK.set(hook).is_ok()
}

/// Called by a device thread as it starts: runs the VMM's hook, if one is set.
pub fn started(kind: ThreadKind) {
    if let Some(hook) = START_HOOK.get() {
        hook(kind);
    }
}
