//! The fw_cfg device from a hostile guest: sequences of port reads and writes on 0x510..0x51c,
//! guest-memory writes that plant DMA descriptors (arbitrary control, length and address) and
//! DMA starts through both address-register forms, against 64 KiB of guest memory and a few
//! items and files. Nothing may panic, and the read-only items must come out unchanged.

#![no_main]

use devices::BusDevice;
use devices::fw_cfg::{
    CTL_ERROR, CTL_READ, CTL_SELECT, CTL_SKIP, CTL_WRITE, FW_CFG_PORTS, FwCfg, KEY_KERNEL_DATA,
    KEY_NB_CPUS, KEY_SIGNATURE,
};
use devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 64 << 10;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut fw = FwCfg::new(mem.clone());
    let kernel: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let e820: Vec<u8> = (0..40u8).collect();
    fw.add_item(KEY_NB_CPUS, 2u16.to_le_bytes().to_vec());
    fw.add_item(KEY_KERNEL_DATA, kernel.clone());
    let ro = fw.add_file("etc/e820", e820.clone()).unwrap();
    let rw = fw
        .add_writable_file("etc/smi/requested-features", vec![0; 16])
        .unwrap();
    fw.add_file("bootorder", b"/pci@i0cf8/scsi@3/disk@0,0\n".to_vec())
        .unwrap();
    let keys = [
        KEY_SIGNATURE,
        KEY_NB_CPUS,
        KEY_KERNEL_DATA,
        ro,
        rw,
        0x19,
        0x7777,
    ];

    // Each operation: kind, width code, 2 offset bytes, 16 bytes of payload.
    for op in data.chunks_exact(20) {
        let len = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let offset = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let payload = &op[4..20];
        match op[0] % 5 {
            0 => fw.write(offset % FW_CFG_PORTS, &payload[..len]),
            1 => {
                let mut out = [0u8; 8];
                fw.read(offset % FW_CFG_PORTS, &mut out[..len]);
            }
            // Raw guest memory (may overwrite a planted descriptor or target).
            2 => {
                let at = offset % MEM;
                let n = (payload.len() as u64).min(MEM - at) as usize;
                mem.write_slice(&payload[..n], GuestAddress(at)).unwrap();
            }
            // A fully arbitrary descriptor, started with the high/low pair or one 64-bit write;
            // the high half is nonzero (outside memory) when op[1] asks for it.
            3 => {
                let at = offset % MEM;
                let n = (payload.len() as u64).min(MEM - at) as usize;
                mem.write_slice(&payload[..n], GuestAddress(at)).unwrap();
                let high = u32::from(op[1] >> 7);
                if op[1] & 0x40 != 0 {
                    let full = (u64::from(high) << 32) | at;
                    fw.write(4, &full.to_be_bytes());
                } else {
                    fw.write(4, &high.to_be_bytes());
                    fw.write(8, &(at as u32).to_be_bytes());
                }
            }
            // A plausible descriptor: one of the known keys, a real operation, a length and
            // address that mostly land near guest memory.
            _ => {
                let at = offset % MEM;
                let ops = [
                    CTL_READ,
                    CTL_SKIP,
                    CTL_WRITE,
                    0,
                    CTL_READ | CTL_WRITE,
                    CTL_ERROR,
                ];
                let mut control = ops[usize::from(payload[0]) % ops.len()];
                if payload[1] & 1 != 0 {
                    let key = keys[usize::from(payload[1] >> 1) % keys.len()];
                    control |= CTL_SELECT | (u32::from(key) << 16);
                }
                let length = be32(&payload[2..6]) >> (payload[6] % 32);
                let address = u64::from(be32(&payload[7..11])) % (MEM + 0x100);
                let mut desc = Vec::with_capacity(16);
                desc.extend_from_slice(&control.to_be_bytes());
                desc.extend_from_slice(&length.to_be_bytes());
                desc.extend_from_slice(&address.to_be_bytes());
                let n = (desc.len() as u64).min(MEM - at) as usize;
                mem.write_slice(&desc[..n], GuestAddress(at)).unwrap();
                fw.write(4, &0u32.to_be_bytes());
                fw.write(8, &(at as u32).to_be_bytes());
            }
        }
    }

    // Only the writable file may change, and never in size.
    assert_eq!(fw.item(KEY_SIGNATURE), Some(&b"QEMU"[..]));
    assert_eq!(fw.item(KEY_KERNEL_DATA), Some(&kernel[..]));
    assert_eq!(fw.item(ro), Some(&e820[..]));
    assert_eq!(fw.item(rw).map(<[u8]>::len), Some(16));
});
