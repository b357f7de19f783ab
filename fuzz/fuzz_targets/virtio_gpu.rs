//! The virtio-gpu control and cursor queues, from whatever the guest put in memory: the rings,
//! the descriptor chains (addresses, lengths, flags, loops) and every command in them
//! (resource ids, formats, sizes, rectangles, transfer offsets, backing entries, scanouts,
//! fences) are fuzzer bytes, served for a few rounds. Nothing may panic or hang; the host
//! memory the resources take stays within the limit, and the screen's frame always holds
//! exactly its pixels, with damage inside it.

#![no_main]

use devices::virtio::GuestMemoryMmap;
use devices::virtio::gpu::{Buffers, Gpu2d, Screen, serve};
use libfuzzer_sys::fuzz_target;
use rvmspawn_fuzz::{Quiet, queue};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 * 1024;
/// Small, so that a round of resource creation stays fast; the real device's is 256 MiB.
const LIMIT: u64 = 4 << 20;
// The input is copied to guest address 0: the rings first, buffers from 0x600 on.
const CTRL: [u32; 3] = [0x0, 0x100, 0x200];
const CURSOR: [u32; 3] = [0x300, 0x400, 0x500];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (params, body) = data.split_at(4);
    let ctrl_size = 1u16 << (params[0] % 5); // 1..=16
    let cursor_size = 1u16 << (params[1] % 5);
    let event_idx = params[2] & 1 != 0;
    let rounds = 1 + params[3] % 4;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let body = &body[..body.len().min(MEM_SIZE)];
    mem.write_slice(body, GuestAddress(0)).unwrap();
    let (Some(mut ctrl), Some(mut cursor)) = (
        queue(&mem, ctrl_size, event_idx, CTRL),
        queue(&mem, cursor_size, event_idx, CURSOR),
    ) else {
        return;
    };
    let screen = Screen::new(64, 48);
    let mut gpu = Gpu2d::with_memory_limit(screen.clone(), LIMIT);
    let mut buffers = Buffers::default();
    for _ in 0..rounds {
        let a = serve(&mut ctrl, &mem, &Quiet, 0, &mut gpu, &mut buffers);
        let b = serve(&mut cursor, &mem, &Quiet, 1, &mut gpu, &mut buffers);
        assert!(gpu.host_memory() <= LIMIT);
        {
            let f = screen.frame();
            assert_eq!(f.pixels.len(), f.width as usize * f.height as usize);
            if let Some(d) = f.damage {
                assert!(d.inside(f.width, f.height), "{d:?} in {}x{}", f.width, f.height);
            }
        }
        if !a || !b {
            break;
        }
    }
    gpu.reset();
    assert_eq!(gpu.host_memory(), 0);
    assert_eq!(screen.frame().width, 0);
});
