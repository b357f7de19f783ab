//! System Management Mode as the devices see it: whether the access being served comes from a
//! vCPU in SMM.
//!
//! KVM marks every exit of a vCPU in SMM (`KVM_RUN_X86_SMM` in `kvm_run.flags`). The vCPU
//! thread records that here before it dispatches an MMIO exit's access to the bus (no port
//! device asks, so port exits leave it as it was), so that a device
//! can treat SMM accesses apart (QEMU passes the same as the access's `secure` attribute): the
//! variable store's flash takes writes only from SMM. A thread-local rather than an argument to
//! every `BusDevice` call, because one device in the whole machine asks.

use std::cell::Cell;

thread_local! {
    static IN_SMM: Cell<bool> = const { Cell::new(false) };
}

/// Record whether the access this thread is about to dispatch comes from SMM.
pub fn set_access_from_smm(smm: bool) {
    IN_SMM.with(|c| c.set(smm));
}

/// Whether the access being served comes from a vCPU in SMM (false on any thread that is not
/// a vCPU's).
pub fn access_from_smm() -> bool {
    IN_SMM.with(Cell::get)
}

/// Run `f` as if its accesses came from SMM (`smm`), restoring the previous state after (for
/// tests and fuzz targets).
pub fn with_access_from_smm<R>(smm: bool, f: impl FnOnce() -> R) -> R {
    let was = access_from_smm();
    set_access_from_smm(smm);
    let r = f();
    set_access_from_smm(was);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_per_thread_and_restored() {
        assert!(!access_from_smm());
        with_access_from_smm(true, || {
            assert!(access_from_smm());
            assert!(!std::thread::spawn(access_from_smm).join().unwrap());
        });
        assert!(!access_from_smm());
    }
}
