//! The userspace virtio-vsock packet path, from whatever the guest put in memory: the tx and rx
//! rings, descriptor chains, packet headers (CIDs, ports, ops, lengths, credit fields) and
//! payloads are all fuzzer bytes. Port 9 has an in-process handler, so connections open, carry
//! data and close; every other port is refused with RST. The device must answer or drop every
//! packet without panicking, hanging or growing without bound.

#![no_main]

use std::sync::Arc;

use devices::virtio::GuestMemoryMmap;
use devices::virtio::vsock_user::{Engine, HostPortHandler, VsockUser};
use libfuzzer_sys::fuzz_target;
use rvmspawn_fuzz::{Quiet, queue};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 * 1024;
/// The guest's CID, as the seeds' headers carry it.
const CID: u64 = 3;
// A compact layout: the input is copied to guest address 0. Buffers start at 0x600.
const TX_DESC: u32 = 0x0;
const TX_AVAIL: u32 = 0x100;
const TX_USED: u32 = 0x200;
const RX_DESC: u32 = 0x300;
const RX_AVAIL: u32 = 0x400;
const RX_USED: u32 = 0x500;

struct Sink;
impl HostPortHandler for Sink {
    fn data(&self, _: u64, _: &[u8]) {}
    fn closed(&self, _: u64) {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (params, body) = data.split_at(4);
    let tx_size = 1u16 << (params[0] % 5); // 1..=16
    let rx_size = 1u16 << (params[1] % 5);
    let event_idx = params[2] & 1 != 0;
    let rounds = 1 + params[3] % 4;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let body = &body[..body.len().min(MEM_SIZE)];
    mem.write_slice(body, GuestAddress(0)).unwrap();
    let Some(tx) = queue(&mem, tx_size, event_idx, [TX_DESC, TX_AVAIL, TX_USED]) else {
        return;
    };
    let Some(rx) = queue(&mem, rx_size, event_idx, [RX_DESC, RX_AVAIL, RX_USED]) else {
        return;
    };
    let mut dev = VsockUser::new(CID, None).unwrap();
    dev.add_handler(9, Arc::new(Sink));
    let mut engine = Engine::new(&dev, mem, rx, tx, Arc::new(Quiet)).unwrap();
    // Several rounds: later ones see the rings (and the connections) as earlier ones left them.
    for _ in 0..rounds {
        if !engine.process_tx() || !engine.fill_rx() {
            break;
        }
    }
});
