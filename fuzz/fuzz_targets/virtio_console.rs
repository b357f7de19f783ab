//! The virtio-console queues, from whatever the guest put in memory: the receive and transmit
//! rings and their descriptor chains (addresses, lengths, flags, loops) are all fuzzer bytes,
//! and typed input is queued between rounds. The device must serve or refuse every chain
//! without panicking, hanging or losing queued input.

#![no_main]

use std::sync::{Arc, Mutex};

use devices::virtio::GuestMemoryMmap;
use devices::virtio::console::{ConsolePort, Engine, INPUT_CAPACITY};
use libfuzzer_sys::fuzz_target;
use rvmspawn_fuzz::{Quiet, queue};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 64 * 1024;
// The input is copied to guest address 0: the rings first, buffers from 0x600 on.
const RX: [u32; 3] = [0x0, 0x100, 0x200];
const TX: [u32; 3] = [0x300, 0x400, 0x500];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (params, body) = data.split_at(4);
    let rx_size = 1u16 << (params[0] % 5); // 1..=16
    let tx_size = 1u16 << (params[1] % 5);
    let event_idx = params[2] & 1 != 0;
    let rounds = 1 + params[3] % 4;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let body = &body[..body.len().min(MEM_SIZE)];
    mem.write_slice(body, GuestAddress(0)).unwrap();
    let (Some(rx), Some(tx)) = (
        queue(&mem, rx_size, event_idx, RX),
        queue(&mem, tx_size, event_idx, TX),
    ) else {
        return;
    };
    let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let port = Arc::new(ConsolePort::new(drained, Some((80, 24))).unwrap());
    let mut engine = Engine::new(
        mem,
        rx,
        tx,
        Arc::new(Quiet),
        port.clone(),
        Arc::new(Mutex::new(Box::new(std::io::sink()))),
    );
    let typed: Vec<u8> = (0..=255u8).cycle().take(INPUT_CAPACITY + 7).collect();
    let mut queued = 0usize;
    for _ in 0..rounds {
        let before = port.pending();
        queued += port.enqueue(&typed[..300]);
        assert!(port.pending() <= INPUT_CAPACITY && port.pending() >= before);
        if !engine.process_tx() || !engine.fill_rx() {
            break;
        }
    }
    assert!(port.pending() <= queued);
});
