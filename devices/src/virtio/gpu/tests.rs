use vm_memory::{Bytes, GuestAddress};

use super::*;

const MEM: usize = 1 << 20;
/// Where the guest keeps its framebuffer in the tests' memory.
const FB: u64 = 0x1_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

fn req(kind: u32, body: &[u32]) -> Vec<u8> {
    let mut r = kind.to_le_bytes().to_vec();
    r.extend_from_slice(&[0; HDR_LEN - 4]);
    for v in body {
        r.extend_from_slice(&v.to_le_bytes());
    }
    r
}

struct Rig {
    mem: GuestMemoryMmap,
    gpu: Gpu2d,
    screen: Arc<Screen>,
    out: Vec<u8>,
}

impl Rig {
    fn new() -> Rig {
        let screen = Screen::new(640, 480);
        Rig {
            mem: mem(),
            gpu: Gpu2d::new(screen.clone()),
            screen,
            out: Vec::new(),
        }
    }

    /// Send a request; returns the response type.
    fn send(&mut self, r: &[u8]) -> u32 {
        self.gpu.process(&self.mem, r, &mut self.out);
        le32(&self.out, 0).unwrap()
    }

    fn create(&mut self, id: u32, format: u32, w: u32, h: u32) -> u32 {
        self.send(&req(cmd::RESOURCE_CREATE_2D, &[id, format, w, h]))
    }

    fn attach(&mut self, id: u32, entries: &[(u64, u32)]) -> u32 {
        let mut r = req(cmd::RESOURCE_ATTACH_BACKING, &[id, entries.len() as u32]);
        for (a, l) in entries {
            r.extend_from_slice(&a.to_le_bytes());
            r.extend_from_slice(&l.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
        }
        self.send(&r)
    }

    fn transfer(&mut self, id: u32, rect: [u32; 4], offset: u64) -> u32 {
        let mut r = req(cmd::TRANSFER_TO_HOST_2D, &rect);
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&id.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        self.send(&r)
    }

    fn scanout(&mut self, id: u32, rect: [u32; 4]) -> u32 {
        let mut b = rect.to_vec();
        b.extend_from_slice(&[0, id]);
        self.send(&req(cmd::SET_SCANOUT, &b))
    }

    fn flush(&mut self, id: u32, rect: [u32; 4]) -> u32 {
        let mut b = rect.to_vec();
        b.extend_from_slice(&[id, 0]);
        self.send(&req(cmd::RESOURCE_FLUSH, &b))
    }

    /// A `w` x `h` B8G8R8X8 resource `id` backed at FB in two pieces, pixel (x, y) being
    /// 0x00_yy_xx_11 in guest memory.
    fn framebuffer(&mut self, id: u32, w: u32, h: u32) {
        for y in 0..h {
            for x in 0..w {
                let v: u32 = (y & 0xff) << 16 | (x & 0xff) << 8 | 0x11;
                self.mem
                    .write_obj(v, GuestAddress(FB + u64::from(y * w + x) * 4))
                    .unwrap();
            }
        }
        assert_eq!(self.create(id, 2, w, h), cmd::OK_NODATA);
        let half = w * h * 2;
        let entries = [(FB, half), (FB + u64::from(half), half)];
        assert_eq!(self.attach(id, &entries), cmd::OK_NODATA);
    }
}

#[test]
fn display_info_and_edid_offer_the_windows_size() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.send(&req(cmd::GET_DISPLAY_INFO, &[])),
        cmd::OK_DISPLAY_INFO
    );
    assert_eq!(rig.out.len(), HDR_LEN + 16 * 24);
    // pmodes[0]: rect (0, 0, 640, 480), enabled.
    assert_eq!(le32(&rig.out, HDR_LEN + 8), Some(640));
    assert_eq!(le32(&rig.out, HDR_LEN + 12), Some(480));
    assert_eq!(le32(&rig.out, HDR_LEN + 16), Some(1));
    assert_eq!(le32(&rig.out, HDR_LEN + 24 + 16), Some(0));

    assert_eq!(rig.send(&req(cmd::GET_EDID, &[0, 0])), cmd::OK_EDID);
    assert_eq!(le32(&rig.out, HDR_LEN), Some(128));
    let e = &rig.out[HDR_LEN + 8..HDR_LEN + 8 + 128];
    assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    // The preferred detailed timing is 640x480.
    let d = &e[54..72];
    assert_eq!(u32::from(d[2]) | u32::from(d[4] >> 4) << 8, 640);
    assert_eq!(u32::from(d[5]) | u32::from(d[7] >> 4) << 8, 480);
    assert!(e[72..90].windows(8).any(|w| w == b"rvmspawn"));
    assert_eq!(
        rig.send(&req(cmd::GET_EDID, &[1, 0])),
        cmd::ERR_INVALID_SCANOUT_ID
    );
}

#[test]
fn a_transfer_and_flush_reach_the_screen_only_for_the_flushed_rectangle() {
    let mut rig = Rig::new();
    rig.framebuffer(7, 64, 32);
    assert_eq!(rig.transfer(7, [0, 0, 64, 32], 0), cmd::OK_NODATA);
    assert_eq!(rig.scanout(7, [0, 0, 64, 32]), cmd::OK_NODATA);
    {
        let mut f = rig.screen.frame();
        assert_eq!((f.width, f.height), (64, 32));
        // B8G8R8X8 bytes 11, xx, yy, 00 are R = yy, G = xx, B = 0x11.
        assert_eq!(f.pixels[5 * 64 + 9], 0x05_09_11);
        assert_eq!(
            f.damage.take(),
            Some(Rect {
                x: 0,
                y: 0,
                width: 64,
                height: 32
            })
        );
    }
    // The guest changes two pixels, transfers a 4x2 rectangle at (8, 3) and flushes it.
    rig.mem
        .write_obj(0x00ab_cdefu32, GuestAddress(FB + (3 * 64 + 8) * 4))
        .unwrap();
    rig.mem
        .write_obj(0x0012_3456u32, GuestAddress(FB + (4 * 64 + 11) * 4))
        .unwrap();
    // A pixel outside the transferred rectangle changes in guest memory only.
    rig.mem
        .write_obj(0x0099_9999u32, GuestAddress(FB + (20 * 64 + 20) * 4))
        .unwrap();
    assert_eq!(
        rig.transfer(7, [8, 3, 4, 2], (3 * 64 + 8) * 4),
        cmd::OK_NODATA
    );
    // Not shown before the flush.
    assert_eq!(rig.screen.frame().pixels[3 * 64 + 8], 0x03_08_11);
    assert_eq!(rig.flush(7, [8, 3, 4, 2]), cmd::OK_NODATA);
    let f = rig.screen.frame();
    assert_eq!(f.pixels[3 * 64 + 8], 0xab_cdef);
    assert_eq!(f.pixels[4 * 64 + 11], 0x12_3456);
    assert_eq!(f.pixels[20 * 64 + 20], 0x14_14_11);
    assert_eq!(
        f.damage,
        Some(Rect {
            x: 8,
            y: 3,
            width: 4,
            height: 2
        })
    );
    assert_eq!(f.mode, 1);
}

#[test]
fn the_scanout_may_show_part_of_a_resource_and_flushes_outside_it_do_nothing() {
    let mut rig = Rig::new();
    rig.framebuffer(1, 64, 32);
    assert_eq!(rig.transfer(1, [0, 0, 64, 32], 0), cmd::OK_NODATA);
    assert_eq!(rig.scanout(1, [16, 8, 32, 16]), cmd::OK_NODATA);
    {
        let mut f = rig.screen.frame();
        assert_eq!((f.width, f.height), (32, 16));
        assert_eq!(f.pixels[0], 0x08_10_11);
        f.damage = None;
    }
    assert_eq!(rig.flush(1, [0, 0, 8, 8]), cmd::OK_NODATA);
    assert_eq!(rig.screen.frame().damage, None);
    assert_eq!(rig.flush(1, [40, 20, 24, 12]), cmd::OK_NODATA);
    assert_eq!(
        rig.screen.frame().damage,
        Some(Rect {
            x: 24,
            y: 12,
            width: 8,
            height: 4
        })
    );
}

#[test]
fn every_format_becomes_xrgb() {
    for (format, bytes, want) in [
        (1u32, [0x33, 0x22, 0x11, 0xff], 0x11_22_33u32),
        (2, [0x33, 0x22, 0x11, 0x00], 0x11_22_33),
        (3, [0xff, 0x11, 0x22, 0x33], 0x11_22_33),
        (4, [0x00, 0x11, 0x22, 0x33], 0x11_22_33),
        (67, [0x11, 0x22, 0x33, 0xff], 0x11_22_33),
        (134, [0x11, 0x22, 0x33, 0x00], 0x11_22_33),
        (68, [0x00, 0x33, 0x22, 0x11], 0x11_22_33),
        (121, [0xff, 0x33, 0x22, 0x11], 0x11_22_33),
    ] {
        let mut rig = Rig::new();
        rig.mem.write_slice(&bytes, GuestAddress(FB)).unwrap();
        assert_eq!(rig.create(1, format, 1, 1), cmd::OK_NODATA, "{format}");
        assert_eq!(rig.attach(1, &[(FB, 4)]), cmd::OK_NODATA);
        assert_eq!(rig.transfer(1, [0, 0, 1, 1], 0), cmd::OK_NODATA);
        assert_eq!(rig.scanout(1, [0, 0, 1, 1]), cmd::OK_NODATA);
        assert_eq!(rig.screen.frame().pixels[0], want, "format {format}");
    }
    let mut rig = Rig::new();
    assert_eq!(rig.create(1, 5, 1, 1), cmd::ERR_INVALID_PARAMETER);
}

#[test]
fn hostile_rectangles_ids_and_backings_get_errors() {
    let mut rig = Rig::new();
    rig.framebuffer(1, 64, 32);
    // Rectangles out of the resource, also by overflow.
    assert_eq!(
        rig.transfer(1, [60, 0, 8, 1], 0),
        cmd::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        rig.transfer(1, [u32::MAX, 0, 2, 1], 0),
        cmd::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        rig.transfer(1, [0, 1, 1, u32::MAX], 0),
        cmd::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        rig.flush(1, [0, u32::MAX, 1, 2]),
        cmd::ERR_INVALID_PARAMETER
    );
    assert_eq!(rig.scanout(1, [0, 0, 65, 32]), cmd::ERR_INVALID_PARAMETER);
    assert_eq!(rig.scanout(1, [0, 0, 0, 0]), cmd::ERR_INVALID_PARAMETER);
    // An offset past the backing, and one that overflows.
    assert_eq!(rig.transfer(1, [0, 0, 64, 32], 4), cmd::ERR_UNSPEC);
    assert_eq!(rig.transfer(1, [0, 0, 1, 2], u64::MAX - 2), cmd::ERR_UNSPEC);
    // Unknown ids, id 0, an id twice, another scanout.
    assert_eq!(
        rig.transfer(2, [0, 0, 1, 1], 0),
        cmd::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(rig.create(0, 2, 1, 1), cmd::ERR_INVALID_RESOURCE_ID);
    assert_eq!(rig.create(1, 2, 1, 1), cmd::ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        rig.send(&req(cmd::SET_SCANOUT, &[0, 0, 1, 1, 1, 1])),
        cmd::ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        rig.send(&req(cmd::RESOURCE_UNREF, &[9, 0])),
        cmd::ERR_INVALID_RESOURCE_ID
    );
    // Sizes: zero, past the largest side.
    assert_eq!(rig.create(2, 2, 0, 1), cmd::ERR_INVALID_PARAMETER);
    assert_eq!(
        rig.create(2, 2, MAX_SIDE + 1, 1),
        cmd::ERR_INVALID_PARAMETER
    );
    // Backing: outside guest memory, straddling its end, wrapping, too many entries, none,
    // twice, on a resource without one for transfer.
    assert_eq!(rig.create(3, 2, 4, 4), cmd::OK_NODATA);
    assert_eq!(rig.attach(3, &[(MEM as u64, 64)]), cmd::ERR_UNSPEC);
    assert_eq!(rig.attach(3, &[(MEM as u64 - 8, 64)]), cmd::ERR_UNSPEC);
    assert_eq!(rig.attach(3, &[(u64::MAX - 4, 64)]), cmd::ERR_UNSPEC);
    assert_eq!(rig.attach(3, &[]), cmd::ERR_UNSPEC);
    assert_eq!(rig.attach(3, &[(0, 0)]), cmd::ERR_UNSPEC);
    let r = req(cmd::RESOURCE_ATTACH_BACKING, &[3, MAX_BACKING_ENTRIES + 1]);
    assert_eq!(rig.send(&r), cmd::ERR_UNSPEC);
    // An entry count larger than the request holds.
    let r = req(cmd::RESOURCE_ATTACH_BACKING, &[3, 3, 0, 0, 64, 0]);
    assert_eq!(rig.send(&r), cmd::ERR_UNSPEC);
    assert_eq!(rig.transfer(3, [0, 0, 4, 4], 0), cmd::ERR_UNSPEC);
    assert_eq!(rig.attach(1, &[(FB, 64)]), cmd::ERR_UNSPEC);
    // Truncated requests, unknown commands, an empty request.
    assert_eq!(
        rig.send(&req(cmd::RESOURCE_CREATE_2D, &[4, 2, 1])),
        cmd::ERR_UNSPEC
    );
    assert_eq!(
        rig.send(&req(cmd::TRANSFER_TO_HOST_2D, &[0, 0, 1, 1, 0])),
        cmd::ERR_UNSPEC
    );
    assert_eq!(rig.send(&req(0x0200, &[])), cmd::ERR_UNSPEC);
    assert_eq!(rig.send(&[1, 2]), cmd::ERR_UNSPEC);
    // The guest's framebuffer is still good.
    assert_eq!(rig.transfer(1, [0, 0, 64, 32], 0), cmd::OK_NODATA);
}

#[test]
fn host_memory_for_resources_is_bounded() {
    let mut rig = Rig::new();
    let side = 4096u32;
    let each = u64::from(side) * u64::from(side) * 4;
    let fit = (MAX_HOST_MEMORY / each) as u32;
    for id in 1..=fit {
        assert_eq!(rig.create(id, 2, side, side), cmd::OK_NODATA);
    }
    assert_eq!(rig.gpu.host_memory(), u64::from(fit) * each);
    assert_eq!(rig.create(fit + 1, 2, side, side), cmd::ERR_OUT_OF_MEMORY);
    assert_eq!(rig.gpu.host_memory(), u64::from(fit) * each);
    // Freeing one makes room for one.
    assert_eq!(rig.send(&req(cmd::RESOURCE_UNREF, &[1, 0])), cmd::OK_NODATA);
    assert_eq!(rig.create(fit + 1, 2, side, side), cmd::OK_NODATA);
    rig.gpu.reset();
    assert_eq!(rig.gpu.host_memory(), 0);
}

#[test]
fn unref_or_disable_of_the_scanout_blanks_the_screen() {
    let mut rig = Rig::new();
    rig.framebuffer(1, 8, 8);
    assert_eq!(rig.scanout(1, [0, 0, 8, 8]), cmd::OK_NODATA);
    let mode = rig.screen.frame().mode;
    assert_eq!(rig.scanout(0, [0, 0, 0, 0]), cmd::OK_NODATA);
    assert_eq!(rig.screen.frame().width, 0);
    assert!(rig.screen.frame().mode > mode);
    assert_eq!(rig.scanout(1, [0, 0, 8, 8]), cmd::OK_NODATA);
    assert_eq!(rig.screen.frame().width, 8);
    assert_eq!(rig.send(&req(cmd::RESOURCE_UNREF, &[1, 0])), cmd::OK_NODATA);
    assert_eq!(rig.screen.frame().width, 0);
    // A flush of the freed id is an error, not a stale copy.
    assert_eq!(rig.flush(1, [0, 0, 8, 8]), cmd::ERR_INVALID_RESOURCE_ID);
}

#[test]
fn a_fenced_request_gets_its_fence_back_and_cursor_commands_no_response() {
    let mut rig = Rig::new();
    let mut r = req(cmd::GET_DISPLAY_INFO, &[]);
    r[4..8].copy_from_slice(&cmd::FLAG_FENCE.to_le_bytes());
    r[8..16].copy_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
    assert_eq!(rig.send(&r), cmd::OK_DISPLAY_INFO);
    assert_eq!(le32(&rig.out, 4), Some(cmd::FLAG_FENCE));
    assert_eq!(le64(&rig.out, 8), Some(0x1234_5678_9abc_def0));
    // Without the flag, no fence id is echoed.
    r[4..8].copy_from_slice(&0u32.to_le_bytes());
    rig.send(&r);
    assert_eq!(le64(&rig.out, 8), Some(0));

    rig.framebuffer(5, 64, 64);
    rig.gpu.process(
        &rig.mem,
        &req(cmd::UPDATE_CURSOR, &[0, 10, 10, 0, 5, 1, 1, 0]),
        &mut rig.out,
    );
    assert!(rig.out.is_empty());
    assert_eq!(rig.gpu.cursor, Some((5, 64, 64)));
    // A cursor resource larger than 64x64, or unknown, is no cursor.
    rig.framebuffer(6, 65, 2);
    rig.gpu.process(
        &rig.mem,
        &req(cmd::UPDATE_CURSOR, &[0, 0, 0, 0, 6, 0, 0, 0]),
        &mut rig.out,
    );
    assert_eq!(rig.gpu.cursor, None);
}

#[test]
fn the_screen_wakes_the_window_once_per_batch_of_damage() {
    let mut rig = Rig::new();
    let wakes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let w = wakes.clone();
    rig.screen.set_waker(Box::new(move || {
        w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    rig.framebuffer(1, 16, 16);
    assert_eq!(rig.scanout(1, [0, 0, 16, 16]), cmd::OK_NODATA);
    assert_eq!(rig.flush(1, [0, 0, 1, 1]), cmd::OK_NODATA);
    assert_eq!(rig.flush(1, [4, 4, 1, 1]), cmd::OK_NODATA);
    // The window has not taken the first damage yet: one wake, and the damage is the union.
    assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        rig.screen.frame().damage.take(),
        Some(Rect {
            x: 0,
            y: 0,
            width: 16,
            height: 16
        })
    );
    assert_eq!(rig.flush(1, [4, 4, 1, 1]), cmd::OK_NODATA);
    assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn through_the_queues_a_response_lands_in_the_writable_part_and_cursor_commands_are_consumed() {
    use crate::virtio::testing::{F_WRITE, Ring, activate_two};
    use std::time::{Duration, Instant};

    let mem = mem();
    let screen = Screen::new(800, 600);
    let mut dev = Gpu::new(screen);
    let (mut ctrl, mut cursor) = (
        Ring::new([0x1000, 0x2000, 0x3000]),
        Ring::new([0x4000, 0x5000, 0x6000]),
    );
    let (irq, notify) = activate_two(&mut dev, &mem, [&ctrl, &cursor], F_EDID);
    // The request split over two readable descriptors, the response over two writable ones.
    let r = req(cmd::GET_DISPLAY_INFO, &[]);
    mem.write_slice(&r, GuestAddress(0x8000)).unwrap();
    mem.write_slice(&[0xee; 1024], GuestAddress(0x9000))
        .unwrap();
    ctrl.chain(
        &mem,
        &[
            (0x8000, 8, 0),
            (0x8008, 16, 0),
            (0x9000, 100, F_WRITE),
            (0x9100, 400, F_WRITE),
        ],
    );
    notify[0].write(1).unwrap();
    let cursor_req = req(cmd::MOVE_CURSOR, &[0, 5, 5, 0, 0, 0, 0, 0]);
    mem.write_slice(&cursor_req, GuestAddress(0xa000)).unwrap();
    cursor.chain(&mem, &[(0xa000, cursor_req.len() as u32, 0)]);
    notify[1].write(1).unwrap();
    let t = Instant::now();
    while (ctrl.used(&mem).is_empty() || cursor.used(&mem).is_empty())
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(ctrl.used(&mem), vec![(0, 408)]);
    assert_eq!(cursor.used(&mem), vec![(0, 0)]);
    let kind: u32 = mem.read_obj(GuestAddress(0x9000)).unwrap();
    assert_eq!(kind, cmd::OK_DISPLAY_INFO);
    // pmodes[0].r.width at 24 + 8 = 32, in the first writable descriptor; enabled at 40;
    // the rest continues in the second.
    let width: u32 = mem.read_obj(GuestAddress(0x9000 + 32)).unwrap();
    let enabled: u32 = mem.read_obj(GuestAddress(0x9000 + 40)).unwrap();
    assert_eq!((width, enabled), (800, 1));
    let last: u8 = mem.read_obj(GuestAddress(0x9100 + 307)).unwrap();
    assert_eq!(last, 0, "the response's tail is in the second descriptor");
    let past: u8 = mem.read_obj(GuestAddress(0x9100 + 308)).unwrap();
    assert_eq!(past, 0xee, "nothing is written past the response");
    assert!(irq.queue[0].load(std::sync::atomic::Ordering::SeqCst) >= 1);
    dev.reset();
}
