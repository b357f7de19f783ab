//! The userspace virtio-net paths, from whatever the guest put in memory: the tx, rx and control
//! rings, descriptor chains, virtio-net headers, control commands and receive buffers are all
//! fuzzer bytes, and so are the frames the back end (a socket pair) hands to the rx queue. The
//! device must send, deliver, drop or refuse every one without panicking or hanging, and must
//! never send the back end a frame outside the bounds it promises.

#![no_main]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use devices::virtio::net::{
    CtrlHandler, HDR_LEN, MAX_TX_BYTES, MIN_FRAME, NetBackend, NetStats, OFFLOAD_FEATURES,
    RxHandler, SocketBackend, TxHandler,
};
use devices::virtio::{GuestMemoryMmap, Interrupt, serve_queue};
use libfuzzer_sys::fuzz_target;
use rvmspawn_fuzz::{Quiet, queue};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 * 1024;
// A compact layout: the input is copied to guest address 0; buffers start at 0x900.
const TX: [u32; 3] = [0x0, 0x100, 0x200];
const RX: [u32; 3] = [0x300, 0x400, 0x500];
const CTRL: [u32; 3] = [0x600, 0x700, 0x800];

fn peer_send(peer: &OwnedFd, bytes: &[u8]) {
    // SAFETY: send reads `bytes.len()` bytes from `bytes`.
    unsafe {
        libc::send(
            peer.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
        )
    };
}

/// Every frame the device sent: its length must be within the bounds.
fn drain_peer(peer: &OwnedFd, buf: &mut [u8]) {
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let r = unsafe {
            libc::recv(
                peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if r < 0 {
            return;
        }
        let n = r as usize;
        assert!(
            (HDR_LEN + MIN_FRAME..=MAX_TX_BYTES).contains(&n),
            "sent {n} bytes"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (params, body) = data.split_at(8);
    let tx_size = 1u16 << (params[0] % 5); // 1..=16
    let rx_size = 1u16 << (params[1] % 5);
    let ctrl_size = 1u16 << (params[2] % 5);
    let event_idx = params[3] & 1 != 0;
    // Feature bits 0..=23 and MQ are net features; VERSION_1 always.
    let features =
        (u64::from(params[4]) | u64::from(params[5]) << 8 | u64::from(params[6]) << 16) | 1 << 32;
    // Frames the back end delivers: up to 3, cut from the input.
    let frames = params[7] % 4;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let body_in_mem = &body[..body.len().min(MEM_SIZE)];
    mem.write_slice(body_in_mem, GuestAddress(0)).unwrap();

    let (backend, peer) = SocketBackend::pair(OFFLOAD_FEATURES).unwrap();
    let backend: Arc<dyn NetBackend> = Arc::new(backend);
    let stats = Arc::new(NetStats::default());
    let quiet: Arc<dyn Interrupt> = Arc::new(Quiet);

    if let Some(mut q) = queue(&mem, ctrl_size, event_idx, CTRL) {
        let mut h = CtrlHandler::new(
            vec![backend.clone(), backend.clone()],
            features,
            stats.clone(),
        );
        serve_queue(&mut q, &mem, quiet.as_ref(), 2, |m, c| h.process(m, c));
    }

    if let Some(mut q) = queue(&mem, tx_size, event_idx, TX) {
        let mut h = TxHandler::new(backend.clone(), features, stats.clone());
        for _ in 0..2 {
            if !serve_queue(&mut q, &mem, quiet.as_ref(), 1, |m, c| h.process(m, c)) {
                break;
            }
        }
        let mut buf = vec![0u8; 16];
        drain_peer(&peer, &mut buf);
    }

    if let Some(q) = queue(&mem, rx_size, event_idx, RX) {
        // Frame lengths and contents come from the end of the input.
        let mut rest = body;
        for i in 0..frames {
            let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                break;
            };
            let len = usize::from(u16::from_le_bytes(*len)) >> (i * 3);
            let len = len.min(tail.len());
            peer_send(&peer, &tail[..len]);
            rest = &tail[len..];
        }
        let mut h = RxHandler::new(backend, mem.clone(), q, 0, quiet, features, stats);
        for _ in 0..2 {
            h.burst();
        }
    }
});
