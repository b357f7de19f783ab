//! The TPM's CRB register file (`devices::tpm::TpmCrb`) under arbitrary register and buffer
//! accesses (any offset in and past the 4 KiB page, any width), with a back end whose responses
//! come from the input too (empty, short, oversized, lying about their size). The device runs
//! on a synchronous back end: a START is answered within the write.
//!
//! The input is a sequence of operations, each starting with an op byte:
//! - `0..=3`: a read: u16 offset, then a width selector;
//! - `4..=7`: a write: u16 offset, a width selector, then that many data bytes;
//! - `8`: queue a back-end response: u16 length (at most 5000), then its bytes;
//! - `9`: a whole well-formed command the way Linux's driver sends it (locality, cmdReady,
//!   the buffer, START): u8 length of its parameters, then them.
//!
//! What must hold: no panic; the registers that never change keep their values; CTRL_REQ
//! reads 0; at the end, a well-formed command with a well-formed response goes through.

#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use devices::tpm::{Tpm, TpmCrb};
use libfuzzer_sys::fuzz_target;

const WIDTHS: [usize; 8] = [1, 2, 4, 8, 1, 4, 3, 16];

fn rd(crb: &mut TpmCrb, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    crb.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(crb: &mut TpmCrb, offset: u64, v: u32) {
    crb.write(offset, &v.to_le_bytes());
}

/// Write `bytes` into the buffer in 4- and 1-byte accesses.
fn fill(crb: &mut TpmCrb, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(4).enumerate() {
        if chunk.len() == 4 {
            crb.write(0x80 + 4 * i as u64, chunk);
        } else {
            for (j, b) in chunk.iter().enumerate() {
                crb.write(0x80 + 4 * i as u64 + j as u64, &[*b]);
            }
        }
    }
}

fn command(params: &[u8]) -> Vec<u8> {
    let mut c = vec![0x80, 0x01];
    c.extend_from_slice(&(10 + params.len() as u32).to_be_bytes());
    c.extend_from_slice(&0x17bu32.to_be_bytes());
    c.extend_from_slice(params);
    c
}

fn linux_command(crb: &mut TpmCrb, c: &[u8]) {
    wr(crb, 0x08, 1);
    wr(crb, 0x40, 1);
    fill(crb, c);
    wr(crb, 0x48, 0);
    wr(crb, 0x4c, 1);
}

fn invariants(crb: &mut TpmCrb) {
    assert_eq!(rd(crb, 0x00) & 0x80, 0x80, "tpmRegValidSts");
    assert_eq!(rd(crb, 0x30) & 0xf, 1, "CRB active");
    assert_eq!(rd(crb, 0x40), 0, "CTRL_REQ reads 0");
    assert_eq!(rd(crb, 0x58), 3968);
    assert_eq!(rd(crb, 0x5c), 0xfed4_0080);
    assert_eq!(rd(crb, 0x64), 3968);
    assert_eq!(rd(crb, 0x68), 0xfed4_0080);
    assert_eq!(
        rd(crb, 0x44) & 1,
        0,
        "a synchronous back end never fails for good"
    );
}

fuzz_target!(|data: &[u8]| {
    let queue: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::default();
    let q = queue.clone();
    let tpm = Tpm::with_responder(Box::new(move |_cmd| {
        q.lock().unwrap().pop_front().unwrap_or_default()
    }))
    .expect("a synchronous TPM");
    let mut crb = tpm.crb();
    let mut input = data;
    let mut take = |n: usize| -> Option<Vec<u8>> {
        if input.len() < n {
            return None;
        }
        let (a, b) = input.split_at(n);
        input = b;
        Some(a.to_vec())
    };
    while let Some(op) = take(1) {
        let op = op[0] % 10;
        match op {
            0..=7 => {
                let Some(h) = take(3) else { break };
                let offset = u64::from(u16::from_le_bytes([h[0], h[1]])) % 0x1010;
                let width = WIDTHS[usize::from(h[2] % 8)];
                if op < 4 {
                    let mut buf = vec![0u8; width];
                    crb.read(offset, &mut buf);
                } else {
                    let Some(bytes) = take(width) else { break };
                    crb.write(offset, &bytes);
                }
            }
            8 => {
                let Some(h) = take(2) else { break };
                let len = usize::from(u16::from_le_bytes([h[0], h[1]])) % 5001;
                let bytes = take(len).unwrap_or_default();
                queue.lock().unwrap().push_back(bytes);
            }
            _ => {
                let Some(h) = take(1) else { break };
                let params = take(usize::from(h[0])).unwrap_or_default();
                linux_command(&mut crb, &command(&params));
            }
        }
        invariants(&mut crb);
    }

    // Whatever happened, a well-formed command with a well-formed response still goes through.
    queue.lock().unwrap().clear();
    let response = vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0, 0xab, 0xcd];
    queue.lock().unwrap().push_back(response.clone());
    // A command still running would hold START: cancel cannot end a synchronous one, but
    // a synchronous back end never leaves one running.
    assert_eq!(rd(&mut crb, 0x4c), 0, "no command left running");
    linux_command(&mut crb, &command(&[0, 2]));
    assert_eq!(rd(&mut crb, 0x4c), 0);
    let got: Vec<u8> = (0..12u64)
        .map(|i| {
            let mut b = [0u8; 1];
            crb.read(0x80 + i, &mut b);
            b[0]
        })
        .collect();
    assert_eq!(got, response);
});
